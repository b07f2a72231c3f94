"""The ``scheduler`` command, a package with one module per noun (see registry.py for the
table of commands). Importing it, building the parser and ``--help`` load only argparse-level
code: the agent, the web stack, the database driver and accounting are imported by the
handler that needs them, so `scheduler jobs` starts fast (bench/cli_startup.py measures it;
tests/unit/test_cli_lazy.py checks it)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from scheduler.cli.args import EXIT_USAGE, UsageError, check_text, one_line
from scheduler.cli.registry import BY_NAME, COMMANDS, build_parser
from scheduler.errors import SchedulerError

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every refusal is one line on stderr (exit 1, or 2 for bad usage)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        check_text(raw)
    except UsageError as exc:
        print(f"scheduler: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(raw)
    if args.command == "completion":
        from scheduler.cli.complete import script

        print(script(parser, args.shell))
        return 0
    try:
        return _run(args)
    except UsageError as exc:
        print(f"scheduler {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SchedulerError as exc:
        print(f"scheduler: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `scheduler jobs | head`: the reader left; nothing more to say.
        _quiet_stdout()
        return 141
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        return _unexpected(exc)


def _run(args: argparse.Namespace) -> int:
    import anyio

    from scheduler.cli.connect import settings_from

    settings = settings_from(args)
    command = BY_NAME[args.command]
    run = command.run
    if run is None:  # completion, answered by main() before settings
        raise UsageError(f"{args.command} takes no settings")
    if command.logs:
        from scheduler import log as logging_setup

        logging_setup.configure(settings.log.level, settings.log.format)
    # uvloop (when installed) roughly halves the agent's event loop cost per request and per
    # job; a one-shot command does not need it.
    options = {"use_uvloop": _has_uvloop()} if command.uvloop else {}
    return anyio.run(run, settings, args, backend_options=options)


def _unexpected(exc: Exception) -> int:
    """One line for an error nobody anticipated; the traceback only with SCHEDULER_DEBUG=1.
    Database errors are translated by the constraint they hit (scheduler.db.refusals)."""
    import asyncpg

    from scheduler.db.refusals import refusal

    if os.environ.get("SCHEDULER_DEBUG"):
        raise exc
    if isinstance(exc, asyncpg.PostgresError):
        print(f"scheduler: error: the database refused: {one_line(refusal(exc))}", file=sys.stderr)
        return 1
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        print(f"scheduler: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"scheduler: error: unexpected {type(exc).__name__}: {one_line(str(exc))} "
        "(SCHEDULER_DEBUG=1 shows the traceback)",
        file=sys.stderr,
    )
    return 1


def _quiet_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _has_uvloop() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None
