"""The CLI package imports what a command needs when it runs: building the parser and
`scheduler jobs --help` load neither the agent, the web stack, the database driver nor the
accounting code (each is imported inside the handler that uses it), and the command table is
declared, not filled in while the parser is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from scheduler.cli import build_parser
from scheduler.cli.schedules import _reparse, template

# Modules a parser (and --help) must never need; a prefix matches the package and below.
HEAVY = (
    "uvicorn",
    "starlette",
    "scheduler.agent",
    "scheduler.api",
    "scheduler.accounting",
    "scheduler.repos",
    "asyncpg",
    "anyio",
    "structlog",
    "prometheus_client",
)


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after ``code`` ran in a fresh interpreter."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
        timeout=60,
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_building_the_parser_loads_nothing_heavy() -> None:
    loaded = _loaded_after("import scheduler.cli\nscheduler.cli.build_parser()")
    assert loaded == []


def test_jobs_help_loads_nothing_heavy() -> None:
    code = (
        "import contextlib, io\n"
        "from scheduler.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as shown:\n"
        "    try:\n"
        "        main(['jobs', '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'usage: scheduler jobs' in shown.getvalue(), shown.getvalue()"
    )
    assert _loaded_after(code) == []


def test_every_command_has_a_handler_before_any_parser_is_built() -> None:
    # The registry is declared at import; building the parser (twice) changes nothing in it.
    code = (
        "from scheduler.cli import registry\n"
        "before = {c.name: c.run for c in registry.COMMANDS}\n"
        "parser = registry.build_parser()\n"
        "registry.build_parser()\n"
        "after = {c.name: c.run for c in registry.COMMANDS}\n"
        "assert before == after\n"
        "sub = next(a for a in parser._actions if a.dest == 'command')\n"
        "assert set(sub.choices) == set(before), (set(sub.choices) ^ set(before))\n"
        "assert all(callable(r) for n, r in before.items() if n != 'completion')"
    )
    _loaded_after(code)


def test_schedules_add_reads_options_after_the_name_twice_in_one_process() -> None:
    # `schedules add NAME --cron C -- CMD` parses the options after NAME again; the parser it
    # uses is made for that call, not kept from (every) build of the command line.
    for _ in range(2):
        args = build_parser().parse_args(
            ["schedules", "add", "nightly", "--cron", "0 3 * * *", "--env", "A=1", "--", "true"]
        )
        _reparse(args)
        assert args.cron == "0 3 * * *"
        assert template(args) == {"argv": ["true"], "env": {"A": "1"}}
