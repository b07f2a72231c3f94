"""The job commands other than submit: ``jobs`` (list), ``show``, ``logs`` (``--follow``) and
the steering verbs ``cancel``, ``freeze``, ``thaw`` (of a job or, with --array, of every
unfinished member of an array). They go through the repositories (:mod:`scheduler.repos`)
like every other client, imported when a handler runs."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import TYPE_CHECKING

from scheduler import states
from scheduler.cli.args import UsageError, bounded_int, job_id
from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import dumps, escape, out, record, table
from scheduler.units import format_bytes

if TYPE_CHECKING:
    from scheduler.config import Settings
    from scheduler.jobs import DesiredState

JOB_STATES = states.JOB_STATES
# The desired_state each steering verb sets.
DESIRED: dict[str, DesiredState] = {"cancel": "cancelled", "freeze": "frozen", "thaw": "running"}


def add_jobs(sub: Subparsers) -> None:
    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    add_common(jobs)
    jobs.add_argument("--tenant", help="only this tenant's jobs")
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    jobs.add_argument(
        "--limit", type=bounded_int(1, 10_000), default=50, help="at most this many jobs"
    )
    jobs.add_argument("--array", type=job_id, default=None, help="only this array's members")


def add_show(sub: Subparsers) -> None:
    show = sub.add_parser("show", help="show one job")
    add_common(show)
    show.add_argument("id", type=job_id, help="the job's id")


def add_logs(sub: Subparsers) -> None:
    logs = sub.add_parser("logs", help="print a job's stdout and stderr")
    add_common(logs)
    logs.add_argument("id", type=job_id, help="the job's id")
    logs.add_argument(
        "--attempt", type=bounded_int(1, 100), help="which attempt (default: the latest)"
    )
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the job ends"
    )


def add_steer(verb: str, sub: Subparsers) -> None:
    """``cancel``, ``freeze`` or ``thaw``."""
    desired = DESIRED[verb]
    parser = sub.add_parser(verb, help=f"set a job's (or array's) desired_state to {desired}")
    add_common(parser)
    parser.add_argument("id", type=job_id, nargs="?", help="the job's id")
    parser.add_argument("--array", type=job_id, help="every unfinished member of this array")
    if verb == "cancel":
        parser.add_argument(
            "--now",
            action="store_true",
            help="kill at once, without the job's grace after SIGTERM (kill_grace_seconds)",
        )


async def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.repos import jobs as jobs_repo

    conn = await connect(settings)
    try:
        rows = await jobs_repo.list_jobs(
            conn, tenant=args.tenant, state=args.state, limit=args.limit, array_id=args.array
        )
    finally:
        await conn.close()
    if args.json:
        print(dumps([record(r) for r in rows]))
        return 0
    print(
        table(
            ["ID", "TENANT", "NAME", "STATE", "REASON", "EXIT", "CPU_S", "MEM_PEAK", "COMMAND"],
            [
                [
                    str(r["id"]),
                    escape(r["tenant"]),
                    escape(r["name"]) or "-",
                    r["state"],
                    # Why a queued job waits (migrations/0017), like squeue's REASON.
                    r.get("pending_reason") or "-",
                    "-" if r["exit_code"] is None else str(r["exit_code"]),
                    "-" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.3f}",
                    format_bytes(r["memory_peak_bytes"]),
                    escape(" ".join(r["argv"])),
                ]
                for r in rows
            ],
            right=("ID", "EXIT", "CPU_S", "MEM_PEAK"),
        )
    )
    if not rows:
        print("scheduler: no jobs match", file=sys.stderr)
    return 0


async def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from scheduler.repos import jobs as jobs_repo

    conn = await connect(settings)
    try:
        row = await jobs_repo.get(conn, args.id)
    finally:
        await conn.close()
    if args.json:
        print(dumps(record(row)))
        return 0
    for key, value in record(row).items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        print(f"{key:>18}: {escape(text)}")
    return 0


async def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.cli.follow import follow, output_files
    from scheduler.repos import jobs as jobs_repo

    if args.follow and args.json:
        raise UsageError("--follow streams the output as it comes; --json prints it once: give one")
    conn = await connect(settings)
    try:
        row = await jobs_repo.get(conn, args.id)
        if args.follow:
            await follow(conn, settings, args.id, attempt=args.attempt)
            return 0
    finally:
        await conn.close()
    files = output_files(settings, row, args.attempt)
    if args.json:
        data = {
            "id": args.id,
            "attempt": files.attempt,
            "stdout": files.read("stdout"),
            "stderr": files.read("stderr"),
        }
        print(dumps(data))
        return 0
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        stream.write(files.read(name))
        stream.flush()
    return 0


async def cmd_desired(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler cancel|freeze|thaw ID`` (or ``--array ID``)."""
    from scheduler.repos import jobs as jobs_repo

    if (args.id is None) == (args.array is None):
        raise UsageError(f"scheduler {args.command}: give a job id or --array ID (one of them)")
    if args.array is not None:
        from scheduler.cli.arrays import steer_array_cli

        return await steer_array_cli(settings, args, DESIRED[args.command])
    conn = await connect(settings)
    try:
        row = await jobs_repo.set_desired_state(
            conn, args.id, DESIRED[args.command], now=getattr(args, "now", False)
        )
    finally:
        await conn.close()
    out(
        args,
        record(row),
        f"job {row['id']}: desired_state {row['desired_state']} (state {row['state']})",
    )
    return 0


JOBS = Command("jobs", add_jobs, cmd_jobs)
SHOW = Command("show", add_show, cmd_show)
LOGS = Command("logs", add_logs, cmd_logs)
STEER = tuple(Command(verb, partial(add_steer, verb), cmd_desired) for verb in DESIRED)
