"""Every command of ``scheduler``, declared once and in the order ``--help`` lists them; the
parser is built from this table and changes nothing in it. Each noun module gives its
commands (name, parser, handler): jobs, submit, arrays, tenants (with budgets), nodes,
schedules, billing (with statements), images, tokens, db (migrate), serve."""

from __future__ import annotations

import argparse
from types import MappingProxyType
from typing import Any

from scheduler.cli import (
    billing,
    db,
    images,
    jobs,
    nodes,
    schedules,
    serve,
    submit,
    tenants,
    tokens,
)
from scheduler.cli.args import CliParser, add_global
from scheduler.cli.command import Command
from scheduler.cli.complete import add_completion

COMMANDS: tuple[Command, ...] = (
    serve.SERVE,
    db.MIGRATE,
    submit.SUBMIT,
    jobs.JOBS,
    jobs.SHOW,
    jobs.LOGS,
    images.IMAGES,
    tokens.TOKENS,
    billing.BILLING,
    *jobs.STEER,
    tenants.TENANTS,
    nodes.NODES,
    schedules.SCHEDULES,
    # Answered by main() from the parser itself (no settings, no database).
    Command("completion", add_completion, None),
)
BY_NAME = MappingProxyType({c.name: c for c in COMMANDS})


class _Version(argparse.Action):
    """--version, read from the installed package's metadata only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("scheduler")
        except PackageNotFoundError:
            found = "unknown (not installed)"
        print(f"scheduler {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the top parser and every command of COMMANDS."""
    parser = CliParser(
        prog="scheduler",
        description="Run tenants' jobs as isolated, accounted processes.",
        epilog="Global options may come before or after the command. Exit codes: 0 success, "
        "1 failure, 2 bad usage; submit --wait: the job's own exit code, 128+N for signal N, "
        "125 could not start, 126 not executable, 127 command not found.",
    )
    parser.add_argument("--version", action=_Version)
    add_global(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser
