"""Hypothesis strategies that build a `scheduler` command line from the parser itself: every
sub-command, its options in any order (globals before or after), values random or hostile.
Shared by the fuzz tests with and without a database."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from scheduler.cli import build_parser, main

HOSTILE = [
    "",
    " ",
    "-",
    "--",
    "-1",
    "0",
    "1",
    "0s",
    "1h30m",
    "99999999999",
    "-99999999999",
    "9" * 40,
    "1e309",
    "nan",
    "inf",
    "0.0000001",
    "none",
    "5000",
    "default",
    "acme",
    "a" * 64,
    "UPPER",
    "../etc",
    "x'; DROP TABLE scheduler.jobs; --",
    "\x1b[2J\x1b]0;title\x07",
    "name\nnewline",
    "\u202eevil",
    "\udcff",
    "\x00",
    "ü",
    "k=v",
    "=v",
    "2026-11-01",
    "2026-13-45",
    "+10m",
    "+",
    "30d",
]
# Commands never generated: serve runs an agent until stopped; completion has its own test.
SKIP_COMMANDS = {("serve",), ("completion",)}
# Options that block by design until a job ends (no agent runs in these tests).
BLOCKING = {"--wait", "--follow"}
# Arguments that name files the command reads or writes.
FILE_DESTS = {"paths", "output", "config", "env_file"}
GLOBAL = {"--config", "--database-url", "--state-dir", "--json", "--help", "--version"}


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Leaf]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [Leaf(path, parser)]
    found: list[Leaf] = []
    for name, child in subs[0].choices.items():
        found += leaves(child, (*path, name))
    return found


def values(paths: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE),
        st.sampled_from(paths),
        st.text(max_size=20),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
    )


@st.composite
def command_lines(
    draw: st.DrawFn,
    paths: list[str],
    skip: set[tuple[str, ...]] = frozenset(),  # type: ignore[assignment]
) -> list[str]:
    """A full argv for one sub-command (never serve), ``paths`` standing for file values."""
    all_leaves = [
        leaf
        for leaf in leaves(build_parser())
        if leaf.path[:1] not in {s[:1] for s in SKIP_COMMANDS if len(s) == 1}
        and leaf.path not in skip
    ]
    leaf = draw(st.sampled_from(all_leaves))
    any_value = values(paths)
    # A file argument is only ever one of ``paths``: a random "/" or "." given to `images add`
    # would copy the whole host (or the repository) into an image.
    file_value = st.sampled_from(paths)
    options: list[list[str]] = []
    positionals: list[str] = []
    for action in leaf.parser._actions:
        value = file_value if action.dest in FILE_DESTS else any_value
        if action.option_strings:
            flag = action.option_strings[-1]
            if flag in BLOCKING or flag in GLOBAL or not draw(st.booleans()):
                continue
            if action.nargs == 0:
                options.append([flag])
            else:
                options.append([flag, draw(value)])
        elif action.dest == "argv":
            positionals += ["--", *draw(st.lists(any_value, min_size=0, max_size=3))]
        elif action.nargs in ("+", "*"):
            positionals += draw(st.lists(value, min_size=1, max_size=2))
        else:
            positionals.append(draw(value))
    if draw(st.booleans()):
        options.append(["--json"])
    options = draw(st.permutations(options))
    tail = positionals[positionals.index("--") :] if "--" in positionals else []
    head = [p for p in positionals if p not in tail] if tail else positionals
    # Options may also come before the sub-command's positionals (argparse interleaves).
    return [*leaf.path, *head, *[w for o in options for w in o], *tail]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return code, out.getvalue(), err.getvalue()


def check_no_traceback(argv: list[str], run: Callable[[list[str]], tuple[int, str, str]]) -> None:
    """The command ends with a code a shell understands and says at most a line per error,
    with no traceback and no raw SQL error."""
    code, _out, err = run(argv)
    assert isinstance(code, int) and 0 <= code <= 255, (argv, code, err)
    for leak in ("Traceback", "HINT:", "DETAIL:", "violates", "asyncpg", "SQLSTATE"):
        assert leak not in err, (argv, err)
    if code == 2:
        assert err.count("\n") == 1, (argv, err)
    if code != 0:
        assert err.strip(), (argv, code)


def tmp_paths(base: Path) -> list[str]:
    garbage = base / "garbage.toml"
    garbage.write_text("this is [not toml\n")
    return [str(base / "missing"), str(base / "missing/dir/x"), str(garbage), str(base / "out")]
