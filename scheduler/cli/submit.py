"""``scheduler submit [options] -- CMD...``: one job, or an array with --array; with --wait
its output is streamed and the command exits with the job's exit code."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from scheduler import jobdefaults
from scheduler.cli.args import (
    INT4_MAX,
    UsageError,
    array_range,
    bounded_int,
    constraint,
    job_ids,
    key_values,
    label,
    run_at,
)
from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import escape, job_exit_code, out, record
from scheduler.units import parse_cores, parse_duration, parse_size

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_submit(sub: Subparsers) -> None:
    submit = sub.add_parser("submit", help="submit a job: scheduler submit [options] -- CMD...")
    add_common(submit)
    submit.add_argument("--tenant", default=jobdefaults.TENANT, help="the tenant the job bills to")
    submit.add_argument(
        "--name", default=jobdefaults.NAME, help="a name for people (shown by jobs, show)"
    )
    submit.add_argument(
        "--cpu",
        type=parse_cores,
        default=None,
        help=f"cores, e.g. 0.5 (default: {jobdefaults.CPU})",
    )
    submit.add_argument(
        "--memory",
        type=parse_size,
        default=None,
        help=f"memory limit, e.g. 256M, 1G (default: {jobdefaults.MEMORY_BYTES >> 20}M)",
    )
    submit.add_argument(
        "--pids",
        type=bounded_int(1, INT4_MAX),
        default=None,
        help=f"max processes (default: {jobdefaults.PIDS_MAX})",
    )
    submit.add_argument(
        "--timeout", type=parse_duration, default=None, help="time limit, e.g. 30s, 5m, 1h30m"
    )
    submit.add_argument(
        "--kill-grace",
        type=parse_duration,
        default=None,
        help="time between SIGTERM and the kill at a cancel or the time limit, e.g. 30s"
        f" (default: {jobdefaults.KILL_GRACE_SECONDS}s; at most 1h; the node may cap it)",
    )
    submit.add_argument(
        "--priority",
        type=bounded_int(-1000, 1000),
        default=jobdefaults.PRIORITY,
        help="higher runs first",
    )
    submit.add_argument(
        "--max-attempts",
        type=bounded_int(1, 100),
        default=jobdefaults.MAX_ATTEMPTS,
        help="attempts before the job fails (a lost node retries)",
    )
    submit.add_argument(
        "--cwd", default=jobdefaults.CWD, help="absolute working directory of the job"
    )
    submit.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable"
    )
    submit.add_argument(
        "--label",
        action="append",
        type=label,
        default=[],
        metavar="KEY=VALUE",
        help="a label (repeatable), e.g. --label team=ml",
    )
    submit.add_argument(
        "--run-at",
        type=run_at,
        default=None,
        metavar="TIME",
        help="not before this time: ISO 8601 (UTC unless it has an offset) or +10m from now",
    )
    submit.add_argument("--image", help="run on this image's layers (scheduler images list)")
    submit.add_argument(
        "--network", action="store_true", help="keep the host's network (if the node allows it)"
    )
    submit.add_argument("--io-read", type=parse_size, default=None, help="disk read bytes/s")
    submit.add_argument("--io-write", type=parse_size, default=None, help="disk write bytes/s")
    submit.add_argument(
        "--output-limit",
        type=parse_size,
        default=None,
        help="most bytes of stdout+stderr kept (default: the tenant's, else the node's)",
    )
    submit.add_argument(
        "--after",
        type=job_ids,
        default=None,
        metavar="ID[,ID...]",
        help="start only after these jobs (of the same tenant) succeeded; if one ends otherwise"
        " this job is cancelled",
    )
    submit.add_argument(
        "--constraint",
        action="append",
        type=constraint,
        default=[],
        metavar="KEY=VALUE",
        help="a label the node must have (repeatable), e.g. --constraint zone=a",
    )
    submit.add_argument(
        "--array",
        type=array_range,
        default=None,
        metavar="START-END[%MAX]",
        help="an array: one job per index (SCHEDULER_ARRAY_INDEX), at most MAX running at once",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="stream the job's output, wait for its end and exit with its exit code",
    )
    submit.add_argument(
        "--quiet", "-q", action="store_true", help="with --wait: do not stream the output"
    )
    submit.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command, after --"
    )


async def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scheduler import requests
    from scheduler.repos import jobs as jobs_repo

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given: scheduler submit [options] -- CMD...")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    request = requests.JobRequest(
        argv=argv,
        tenant=args.tenant,
        name=args.name,
        env=env,
        cwd=args.cwd,
        priority=args.priority,
        max_attempts=args.max_attempts,
        timeout_seconds=args.timeout,
        labels=dict(key_values(args.label, "--label")),
        run_at=args.run_at,
        image=args.image,
        network=args.network,
        io_read_bps=args.io_read,
        io_write_bps=args.io_write,
        output_limit_bytes=args.output_limit,
        depends_on=args.after or [],
        constraints=key_values(args.constraint, "--constraint"),
        kill_grace_seconds=args.kill_grace,
    )
    overrides: dict[str, Any] = {}
    if args.cpu is not None:
        overrides["cpu"] = args.cpu
    if args.memory is not None:
        overrides["memory_bytes"] = args.memory
    if args.pids is not None:
        overrides["pids_max"] = args.pids
    if overrides:
        request = replace(request, **overrides)
    if args.array is not None:
        if args.wait:
            raise UsageError("--wait is for one job: follow an array with scheduler jobs --array")
        from scheduler.cli.arrays import submit_array_cli

        return await submit_array_cli(settings, args, request)
    conn = await connect(settings)
    try:
        row = await jobs_repo.submit(conn, request)
        if not args.wait:
            out(args, record(row), str(row["id"]))
            return 0
        if not args.json:
            print(row["id"], file=sys.stderr)
        if args.quiet or args.json:
            final = await jobs_repo.wait(conn, row["id"])
        else:
            from scheduler.cli.follow import follow

            final = await follow(conn, settings, row["id"], attempt=None)
    finally:
        await conn.close()
    out(args, record(final), escape(describe(final)), human_to=sys.stderr)
    return job_exit_code(final)


def describe(row: Any) -> str:
    text = f"job {row['id']}: {row['state']}"
    if row["exit_code"] is not None:
        text += f" (exit code {row['exit_code']})"
    if row["signal"] is not None:
        text += f" (signal {row['signal']})"
    if row["error"]:
        text += f": {row['error']}"
    return text


SUBMIT = Command("submit", add_submit, cmd_submit)
