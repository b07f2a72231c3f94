"""The CLI as a person meets it, without a database: usage errors are one line and exit 2,
every option has help, global options go before or after the command, durations, labels,
run-at, escaping, tables that fit, exit codes, completion, and a fast start."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from scheduler.accounting.export import FORMATS
from scheduler.api.jobs import STATES
from scheduler.cli import build_parser, main
from scheduler.cli.args import label, run_at
from scheduler.cli.billing import EXPORT_FORMATS
from scheduler.cli.complete import script
from scheduler.cli.jobs import JOB_STATES
from scheduler.cli.output import escape, job_exit_code, table
from scheduler.units import UnitError, parse_duration

# A database that cannot exist: commands that get past parsing fail to connect, in one line.
NOWHERE = "postgresql://nobody@/none?host=/nonexistent-socket-dir"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["jobs", "--limit", "-1"], "expected [1, 10000]"),
        (["submit", "--priority", "99999999999", "--", "true"], "expected [-1000, 1000]"),
        (["submit", "--max-attempts", "0", "--", "true"], "expected [1, 100]"),
        (["jobs", "--state", "bogus"], "choose from 'queued'"),
        (["submit", "--timeout", "soon", "--", "true"], "1h30m"),
        (["submit", "--memory", "lots", "--", "true"], "256M"),
        (["submit", "--label", "novalue", "--", "true"], "KEY=VALUE"),
        (["submit", "--run-at", "tomorrow", "--", "true"], "+10m"),
        (["show", "0"], "expected [1,"),
        (["show", "abc"], "not a job id"),
        (["submit", "--name", "x\udcff", "--", "true"], "not valid UTF-8"),
        (["submit", "--", "echo", "\udcffbad"], "not valid UTF-8"),
        (["submit", "--name", "a\x00b", "--", "true"], "NUL"),
        (["submit"], "no command given"),
        (["billing", "export"], "--last 30d"),
        (["billing", "export", "--last", "30d", "--from", "2026-01-01"], "not both"),
        (["tenants", "add", "acme", "--weight", "0"], "expected [1, 10000]"),
        (["nosuch"], "invalid choice"),
        (["logs", "1", "--follow", "--json"], "give one"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], says: str) -> None:
    code, out, err = run(["--database-url", NOWHERE, *argv])
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and says in err, err
    assert "Traceback" not in err and out == ""


def test_output_to_a_missing_directory_is_one_line() -> None:
    code, _, err = run(
        [
            "--database-url",
            NOWHERE,
            "billing",
            "export",
            "--last",
            "1d",
            "--output",
            "/missing/dir/x",
        ]
    )
    assert code == 2 and "directory /missing/dir not found" in err and err.count("\n") == 1


def test_unreachable_database_is_one_line_exit_1() -> None:
    code, _, err = run(["jobs", "--database-url", NOWHERE])
    assert code == 1 and err.startswith("scheduler: error: cannot connect") and err.count("\n") == 1


def test_version() -> None:
    code, out, _ = run(["--version"])
    assert code == 0 and out.startswith("scheduler 0.")


def test_global_options_before_or_after_the_command() -> None:
    parser = build_parser()
    for argv in (
        ["--json", "--database-url", "x", "jobs"],
        ["jobs", "--json", "--database-url", "x"],
    ):
        args = parser.parse_args(argv)
        assert args.json is True and args.database_url == "x", argv
    args = parser.parse_args(["tenants", "list"])
    assert args.json is False and args.database_url is None
    # The later one wins, as with any repeated option.
    assert parser.parse_args(["--state-dir", "/a", "jobs", "--state-dir", "/b"]).state_dir == "/b"


def _walk(parser: argparse.ArgumentParser, path: str = "scheduler") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _walk(child, f"{path} {name}")
        else:
            found.append((path, action))
    return found


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    missing = [
        f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in _walk(parser) if not a.help
    ]
    assert missing == []
    submit = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_text = submit.choices["submit"].format_help()
    assert "(default: default)" in help_text  # --tenant
    assert "(default: /)" in help_text  # --cwd


def test_the_cli_lists_the_same_states_and_formats_as_the_code() -> None:
    assert JOB_STATES == STATES
    assert tuple(EXPORT_FORMATS) == tuple(FORMATS)


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d12h") == 216000
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == Decimal("0.250")
    for bad in ("30m1h", "1h1h", "h", "", "-5s", "1e9s"):
        with pytest.raises(UnitError):
            parse_duration(bad)


def test_labels_and_run_at() -> None:
    assert label("team=ml") == ("team", "ml")
    assert label("k=a=b") == ("k", "a=b")
    for bad in ("team", "=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            label(bad)
    soon = run_at("+10m")
    assert timedelta(minutes=9) < soon - datetime.now(UTC) <= timedelta(minutes=10)
    assert run_at("2026-12-24T18:00:00") == datetime(2026, 12, 24, 18, tzinfo=UTC)
    assert run_at("2026-12-24T19:00:00+01:00") == datetime(2026, 12, 24, 18, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        run_at("+100000d")


def test_control_characters_are_escaped() -> None:
    hostile = "job\x1b[2J\x1b]0;pwned\x07\r\n\u202eevil\x7f\x9b"
    shown = escape(hostile)
    assert all(ord(c) >= 0x20 and c != "\x7f" and not 0x80 <= ord(c) < 0xA0 for c in shown)
    assert "\u202e" not in shown
    assert shown.startswith("job\\x1b[2J")


def test_tables_fit_the_terminal() -> None:
    rows = [["1", "t" * 63, "running", "sh -c " + "x" * 200]]
    text = table(["ID", "TENANT", "STATE", "COMMAND"], rows, right=("ID",), width=80)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "~" in text  # a cut cell says so
    wide = table(["ID", "NAME"], [["1", "short"]], width=80)
    assert wide.splitlines()[1] == "1   short"


def _row(**values: Any) -> dict[str, Any]:
    base = {"exit_code": None, "signal": None, "error": None, "state": "failed"}
    return {**base, **values}


def test_exit_codes_tell_a_start_failure_from_the_job() -> None:
    assert job_exit_code(_row(exit_code=0, state="succeeded")) == 0
    assert job_exit_code(_row(exit_code=1)) == 1
    assert job_exit_code(_row(signal=9, state="cancelled")) == 137
    assert job_exit_code(_row(error="exec: nope: No such file or directory")) == 127
    assert job_exit_code(_row(error="exec: ./x: Permission denied")) == 126
    assert job_exit_code(_row(error="cwd: /nope: No such file or directory")) == 125
    assert job_exit_code(_row(error="cannot start the monitor: boom")) == 125
    assert job_exit_code(_row(state="cancelled")) == 1


def test_bash_completion_completes_commands_actions_and_options(tmp_path: Path) -> None:
    completion = tmp_path / "scheduler.bash"
    completion.write_text(script(build_parser(), "bash"))

    def complete(*words: str) -> list[str]:
        probe = (
            f"source {completion}; COMP_WORDS=(scheduler {' '.join(words)}); "
            f"COMP_CWORD={len(words)}; _scheduler; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert complete("su") == ["submit"]
    assert set(complete("tenants", "")) >= {"add", "list", "freeze", "thaw"}
    assert "--max-attempts" in complete("submit", "--max")
    assert complete("jobs", "--state", "") != []  # after an option: the command's words


ZSH_DRIVER = """
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z 'PS1="> "; autoload -U compinit; compinit -u; source {script}'
sleep 1
zpty -w -n z '{line}'$'\\t'
sleep 2
all=""
while zpty -r -t z chunk; do all+=$chunk; done
print -r -- "$all"
"""


@pytest.mark.parametrize(
    ("line", "completed"),
    [("scheduler su", "scheduler submit"), ("scheduler submit --max-a", "--max-attempts")],
)
def test_zsh_completion_in_a_real_zsh(tmp_path: Path, line: str, completed: str) -> None:
    # An interactive zsh on a pseudo-terminal (zsh/zpty) with its completion system: TAB.
    if shutil.which("zsh") is None:
        pytest.skip("no zsh (make system-deps installs it)")
    completion = tmp_path / "scheduler.zsh"
    completion.write_text(script(build_parser(), "zsh"))
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER.format(script=completion, line=line))
    done = subprocess.run(
        ["zsh", "-f", str(driver)], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed in done.stdout, done.stdout[-500:]


def test_jobs_does_not_import_the_agent_or_the_web_stack() -> None:
    probe = (
        "import sys\n"
        "from scheduler.cli import main\n"
        f"main(['--database-url', {NOWHERE!r}, 'jobs'])\n"
        "heavy = [m for m in sys.modules if m.startswith(('scheduler.agent', 'scheduler.api',"
        " 'uvicorn', 'starlette', 'prometheus_client', 'structlog'))]\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ
    )
    assert done.stdout.strip() == "[]", done.stdout
