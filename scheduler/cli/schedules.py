"""``scheduler schedules add|list|pause|resume|rm``: cron schedules that submit a job per due
time. They go through :mod:`scheduler.schedules` like the HTTP API."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from scheduler import jobdefaults
from scheduler.cli.args import CliParser
from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import dumps, record
from scheduler.errors import SchedulerError
from scheduler.schedules import OVERLAPS
from scheduler.units import parse_cores, parse_duration, parse_size

if TYPE_CHECKING:
    from scheduler.config import Settings

EXIT_USAGE = 2


def add_schedules(sub: Subparsers) -> None:
    parser = sub.add_parser("schedules", help="cron schedules: add, list, pause, resume, rm")
    actions = parser.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")
    _add_arguments(
        actions.add_parser(
            "add",
            help="add a schedule: scheduler schedules add NAME --cron '0 3 * * *' [options]"
            " -- CMD...",
        )
    )
    listing = actions.add_parser("list", help="every schedule with its next due time")
    add_common(listing)
    listing.add_argument("--tenant", help="only this tenant's schedules")
    for action, text in (
        ("pause", "stop firing (the due times while paused are not made up)"),
        ("resume", "fire again, from the next due time after now"),
        ("rm", "delete a schedule (the jobs it made stay)"),
    ):
        one = actions.add_parser(action, help=text)
        add_common(one)
        one.add_argument("name", help="the schedule's name")
        one.add_argument("--tenant", default=jobdefaults.TENANT, help="the schedule's tenant")


def _add_arguments(add: argparse.ArgumentParser) -> None:
    """The arguments of ``schedules add`` (also parsed again by _reparse)."""
    add_common(add)
    add.add_argument("name", help="the schedule's name, unique in its tenant")
    add.add_argument("--cron", help="5 fields, e.g. '*/15 * * * *' (required)")
    add.add_argument("--timezone", default="UTC", help="IANA name, e.g. Europe/Paris")
    add.add_argument(
        "--overlap",
        choices=OVERLAPS,
        default="skip",
        help="skip: no new job while the last one runs (default); queue: fire anyway",
    )
    add.add_argument("--paused", action="store_true", help="add it disabled")
    add.add_argument("--tenant", default=jobdefaults.TENANT, help="the tenant whose jobs it makes")
    # The job's fields, as for `scheduler submit` (absent: the database's defaults).
    add.add_argument("--job-name", help="the jobs' name (default: the schedule's)")
    add.add_argument("--cpu", type=parse_cores, help="cores, e.g. 0.5")
    add.add_argument("--memory", type=parse_size, help="e.g. 256M, 1G")
    add.add_argument("--pids", type=int, help="max processes")
    add.add_argument("--timeout", type=parse_duration, help="e.g. 30s, 5m")
    add.add_argument(
        "--kill-grace", type=parse_duration, help="SIGTERM to kill at a cancel, e.g. 30s"
    )
    add.add_argument("--priority", type=int, help="the jobs' priority (higher first)")
    add.add_argument("--max-attempts", type=int, help="attempts per job, retries included")
    add.add_argument("--cwd", help="the jobs' working directory")
    add.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable"
    )
    add.add_argument("--image", help="run on this image's layers")
    add.add_argument("--network", action="store_true", help="keep the host's network")
    add.add_argument("--io-read", type=parse_size, help="disk read bytes/s")
    add.add_argument("--io-write", type=parse_size, help="disk write bytes/s")
    add.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command each job runs"
    )


def _reparse(args: argparse.Namespace) -> None:
    """Read options written after NAME (``add nightly --cron C -- CMD``): argparse hands all
    that follows the first positional to the command, so the part before ``--`` is parsed
    again as options."""
    argv, name = list(args.argv), args.name
    if argv and argv[0] != "--" and argv[0].startswith("-"):
        cut = argv.index("--") if "--" in argv else len(argv)
        again = CliParser(prog="scheduler schedules add")
        _add_arguments(again)
        again.parse_args([*argv[:cut], name, *argv[cut:]], namespace=args)
        if args.name != name:  # a word among the options: the command without its --
            raise UsageError(
                "options after NAME need the command after --: "
                "scheduler schedules add NAME --cron C [options] -- CMD..."
            )
    if args.cron is None:
        raise UsageError("--cron is required, e.g. --cron '0 3 * * *'")


def template(args: argparse.Namespace) -> dict[str, Any]:
    """The job template of ``schedules add``: the flags given, nothing else."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given: scheduler schedules add NAME --cron C -- CMD...")
    job: dict[str, Any] = {"argv": argv}
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    if env:
        job["env"] = env
    optional = {
        "name": args.job_name,
        # Exact decimals travel as strings: the database reads them as numeric.
        "cpu": None if args.cpu is None else str(args.cpu),
        "memory_bytes": args.memory,
        "pids_max": args.pids,
        "timeout_seconds": None if args.timeout is None else str(args.timeout),
        "kill_grace_seconds": None if args.kill_grace is None else str(args.kill_grace),
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        "cwd": args.cwd,
        "image": args.image,
        "io_read_bps": args.io_read,
        "io_write_bps": args.io_write,
    }
    job.update({k: v for k, v in optional.items() if v is not None})
    if args.network:
        job["network"] = True
    return job


class UsageError(SchedulerError):
    """The command line is incomplete."""


async def cmd_schedules(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler schedules ACTION``."""
    from scheduler import schedules

    action = args.schedule_action
    request = None
    if action == "add":
        try:
            _reparse(args)
            request = schedules.ScheduleRequest(
                name=args.name,
                cron=args.cron,
                job=template(args),
                tenant=args.tenant,
                timezone=args.timezone,
                overlap=args.overlap,
                enabled=not args.paused,
            )
        except UsageError as exc:
            print(f"scheduler: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        schedules.check(request)  # before connecting: a bad expression fails fast
    conn = await connect(settings)
    try:
        if action == "list":
            rows = await schedules.list_schedules(conn, tenant=args.tenant)
            _print_list(args, rows)
            return 0
        if request is not None:
            row = await schedules.add(conn, request)
        elif action == "rm":
            row = await schedules.remove(conn, args.tenant, args.name)
        else:
            row = await schedules.set_enabled(conn, args.tenant, args.name, action == "resume")
    finally:
        await conn.close()
    verb = {"add": "added", "rm": "removed", "pause": "paused", "resume": "resumed"}[action]
    human = f"schedule {row['name']} (tenant {row['tenant']}) {verb}"
    if action != "rm":
        human += f"; next due time: {_when(row['next_run_at'] if row['enabled'] else None)}"
    print(dumps(record(row)) if args.json else human)
    return 0


def _when(value: Any) -> str:
    return "-" if value is None else value.isoformat()


def _print_list(args: argparse.Namespace, rows: list[Any]) -> None:
    if args.json:
        print(dumps([record(r) for r in rows]))
        return
    print(
        f"{'TENANT':<12} {'NAME':<20} {'CRON':<16} {'TIMEZONE':<16} {'OVERLAP':<7} "
        f"{'STATE':<8} {'NEXT_RUN_AT':<25} {'LAST_RUN_AT':<25} SKIPPED  COMMAND"
    )
    for r in rows:
        state = "error" if r["error"] else ("enabled" if r["enabled"] else "paused")
        command = " ".join(str(a) for a in r["job"].get("argv", []))[:50]
        print(
            f"{r['tenant']:<12} {r['name']:<20} {r['cron']:<16} {r['timezone']:<16} "
            f"{r['overlap']:<7} {state:<8} {_when(r['next_run_at']):<25} "
            f"{_when(r['last_run_at']):<25} {r['skipped_runs']:>7}  {command}"
        )
        if r["error"]:
            print(f"{'':<12} error: {r['error']}")


SCHEDULES = Command("schedules", add_schedules, cmd_schedules)
