"""Every sub-command fed random and hostile arguments (hypothesis), without a database: the
command must refuse in one line (exit 2) or fail to connect in one line (exit 1), never show
a traceback. tests/integration/test_cli_database.py runs the same against a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.cli import build_parser
from scheduler.cli.output import escape
from tests.cli_fuzz import (
    FILE_DESTS,
    check_no_traceback,
    command_lines,
    leaves,
    run_main,
    tmp_paths,
)

NOWHERE = "postgresql://nobody@/none?host=/nonexistent-socket-dir"
BASE = Path("/var/tmp/scheduler-cli-fuzz")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCHEDULER_DATABASE_URL", NOWHERE)
    monkeypatch.setenv("SCHEDULER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SCHEDULER_DEBUG", raising=False)


BASE.mkdir(exist_ok=True)
PATHS = tmp_paths(BASE)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=command_lines(PATHS))
def test_no_command_line_shows_a_traceback(argv: list[str]) -> None:
    check_no_traceback(argv, run_main)


def test_every_file_argument_is_fuzzed_with_safe_paths_only() -> None:
    # A new Path-typed option must be added to FILE_DESTS, or the fuzz could hand it "/".
    typed = {
        action.dest
        for leaf in leaves(build_parser())
        for action in leaf.parser._actions
        if action.type is Path
    }
    assert typed <= FILE_DESTS, typed - FILE_DESTS


@given(text=st.text())
def test_escaped_text_holds_no_terminal_controls(text: str) -> None:
    shown = escape(text)
    for ch in shown:
        code = ord(ch)
        assert code >= 0x20 and code != 0x7F and not 0x80 <= code < 0xA0, repr(shown)
        assert not 0xD800 <= code < 0xE000 and ch not in "\u202a\u202b\u202c\u202d\u202e"
        assert not 0x2066 <= code <= 0x2069
    shown.encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogates
