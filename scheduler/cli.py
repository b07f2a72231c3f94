"""The ``scheduler`` command: serve, migrate, submit, jobs, show, logs, images, tokens (and,
from :mod:`scheduler.control_cli`, cancel, freeze, thaw and tenants; from
:mod:`scheduler.nodes_cli`, nodes)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler import control_cli, jobdefaults, nodes_cli, schedules_cli, statements_cli, states
from scheduler.cli_args import (
    INT4_MAX,
    CliParser,
    UsageError,
    add_global,
    array_range,
    bounded_int,
    check_text,
    constraint,
    job_id,
    job_ids,
    key_values,
    label,
    last_window,
    one_line,
    run_at,
)
from scheduler.cli_output import escape, job_exit_code, table
from scheduler.errors import SchedulerError
from scheduler.names import NAME_SHAPE
from scheduler.units import format_bytes, parse_cores, parse_duration, parse_size

# Only what every command needs is imported above: the agent, the web stack, accounting and
# images are imported by the commands that use them, so `scheduler jobs` starts fast
# (bench/cli_startup.py measures it).
if TYPE_CHECKING:
    import asyncpg

    from scheduler.config import Settings

EXIT_USAGE = 2
# Commands whose code paths log (structlog). The others (jobs, show, submit, ...) log nothing,
# and skip importing structlog: it is most of their start-up.
LOGGING_COMMANDS = frozenset({"serve", "migrate", "billing", "images", "tenants", "tokens"})


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_global(parser, top=False)


JOB_STATES = states.JOB_STATES
# Formats of `billing export` (scheduler.accounting.export.FORMATS; a test keeps them equal).
EXPORT_FORMATS = ("csv", "json", "focus")


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


def _instant(text: str) -> Any:
    from scheduler.accounting.billing import parse_instant

    return parse_instant(text)


_instant.__name__ = "instant"


def build_parser() -> argparse.ArgumentParser:
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

    serve = sub.add_parser("serve", help="run the node agent (embedded Postgres if no URL)")
    _add_common(serve)
    serve.add_argument("--cgroup-root", help="cgroup directory name under each hierarchy")
    serve.add_argument(
        "--cgroup-driver", choices=["auto", "v1", "v2"], help="cgroup version to use (auto)"
    )
    serve.add_argument("--node-name", help="this node's name (default: host name)")
    serve.add_argument(
        "--max-running", type=bounded_int(1, 100_000), help="attempts run at once on this node"
    )
    serve.add_argument("--poll-interval", type=float, help="safety poll period in seconds")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log threshold"
    )
    serve.add_argument("--log-format", choices=["console", "json"], help="log line format")

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    _add_common(migrate)

    submit = sub.add_parser("submit", help="submit a job: scheduler submit [options] -- CMD...")
    _add_common(submit)
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

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    _add_common(jobs)
    jobs.add_argument("--tenant", help="only this tenant's jobs")
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    jobs.add_argument(
        "--limit", type=bounded_int(1, 10_000), default=50, help="at most this many jobs"
    )
    jobs.add_argument("--array", type=job_id, default=None, help="only this array's members")

    show = sub.add_parser("show", help="show one job")
    _add_common(show)
    show.add_argument("id", type=job_id, help="the job's id")

    logs = sub.add_parser("logs", help="print a job's stdout and stderr")
    _add_common(logs)
    logs.add_argument("id", type=job_id, help="the job's id")
    logs.add_argument(
        "--attempt", type=bounded_int(1, 100), help="which attempt (default: the latest)"
    )
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the job ends"
    )

    images = sub.add_parser("images", help="manage this node's images (layered root filesystems)")
    _add_common(images)
    images_sub = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    images_add = images_sub.add_parser(
        "add", help="build an image: scheduler images add NAME PATH... (bottom layer first)"
    )
    _add_common(images_add)
    images_add.add_argument("name", help=f"the image's name ({NAME_SHAPE})")
    images_add.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a directory or a tarball per read-only layer",
    )
    _add_common(images_sub.add_parser("list", help="list the images of this node"))
    _add_access_commands(sub)
    _add_billing(sub)
    COMMANDS.update(control_cli.add_parsers(sub, _add_common))
    COMMANDS.update(nodes_cli.add_parsers(sub, _add_common))
    COMMANDS.update(schedules_cli.add_parsers(sub, _add_common))
    completion = sub.add_parser("completion", help="print a bash or zsh completion script")
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
    return parser


def _add_access_commands(sub: Any) -> None:
    tokens = sub.add_parser("tokens", help="API bearer tokens for tenants")
    token_sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", help="print a new token for a tenant")
    _add_common(create)
    create.add_argument("--tenant", required=True, help="the tenant the token speaks for")
    create.add_argument("--description", default="", help="a note on what the token is for")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id")
    _add_common(revoke)
    revoke.add_argument("id", type=bounded_int(1, 2**63 - 1), help="the token's id")


def _add_billing(sub: Any) -> None:
    from scheduler.config import UNIT_ENV_FILE

    billing = sub.add_parser("billing", help="priced usage exports and reconciliation")
    actions = billing.add_subparsers(dest="billing_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", help="priced usage of [--from, --to) as csv, json or FOCUS 1.2 csv"
    )
    _add_common(export)
    instant = _instant
    export.add_argument("--from", dest="start", type=instant, help="UTC, inclusive")
    export.add_argument("--to", dest="end", type=instant, help="UTC, exclusive (default: now)")
    export.add_argument(
        "--last",
        type=last_window,
        metavar="DURATION",
        help="instead of --from: the window ending now (or at --to), e.g. 30d, 12h",
    )
    export.add_argument("--format", choices=EXPORT_FORMATS, help="default: csv (json with --json)")
    export.add_argument("--tenant", help="only this tenant's usage")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")
    export.add_argument(
        "--group-by",
        metavar="label:KEY",
        help="sum the costs by the value of job label KEY (csv or json); jobs without it "
        "form the group (none)",
    )
    check = actions.add_parser(
        "check", help="prove the usage rows add up; exit 1 and list each discrepancy"
    )
    _add_common(check)
    check.add_argument("--from", dest="start", type=instant, help="jobs finished from (UTC)")
    check.add_argument("--to", dest="end", type=instant, help="jobs finished before (UTC)")
    check.add_argument("--cgroup-root", help="cgroup directory name under each hierarchy")
    check.add_argument("--node-name", help="this node's name (default: host name)")
    check.add_argument(
        "--no-cgroups", action="store_true", help="skip the tenant cgroup check (other hosts)"
    )
    check.add_argument(
        "--metrics-url",
        help="the node's agent /metrics, whose tenant counters must match the bill "
        "(default: http://HTTP_ADDR/metrics)",
    )
    check.add_argument(
        "--no-metrics", action="store_true", help="skip comparing /metrics with the bill"
    )
    check.add_argument(
        "--env-file",
        type=Path,
        help="the agent unit's EnvironmentFile, whose SCHEDULER_* settings apply where no "
        f"flag or environment variable sets them (default {UNIT_ENV_FILE}, when it exists)",
    )
    statements_cli.add_parsers(actions, _add_common)


def settings_from(args: argparse.Namespace) -> Settings:
    from scheduler.config import load_settings

    flags = {
        k: getattr(args, k, None)
        for k in (
            "database_url",
            "state_dir",
            "cgroup_root",
            "cgroup_driver",
            "node_name",
            "max_running",
            "poll_interval",
            "log_level",
            "log_format",
        )
    }
    return load_settings(flags, environ=_environment(args), config_file=args.config)


def _environment(args: argparse.Namespace) -> Mapping[str, str]:
    """The process environment, over the unit's environment file for the commands that
    compare against this node's kernel (`billing check`): run from a shell, they would
    otherwise look at another cgroup root than the agent's."""
    if not hasattr(args, "env_file"):
        return os.environ
    path = args.env_file
    from scheduler.config import UNIT_ENV_FILE, read_environment_file

    if path is None:
        if not UNIT_ENV_FILE.exists():
            return os.environ
        path = UNIT_ENV_FILE
    # An empty variable counts as unset (as load_settings reads it), so the file's value holds.
    return {**read_environment_file(path), **{k: v for k, v in os.environ.items() if v}}


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
        from scheduler.cli_complete import script

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

    settings = settings_from(args)
    if args.command in LOGGING_COMMANDS:
        from scheduler import log as logging_setup

        logging_setup.configure(settings.log.level, settings.log.format)
    handler = COMMANDS[args.command]
    # uvloop (when installed) roughly halves the agent's event loop cost per request and per
    # job; a one-shot command does not need it.
    options = {"use_uvloop": _has_uvloop()} if args.command == "serve" else {}
    return anyio.run(handler, settings, args, backend_options=options)


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


async def _connect(settings: Settings) -> asyncpg.Connection:
    from scheduler.db.pool import connect_settings

    return await connect_settings(settings)


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler import failpoints
    from scheduler.agent.service import print_ready, serve
    from scheduler.cli_admin import with_admin_token

    if os.geteuid() != 0:
        print(
            "scheduler: warning: not root; creating cgroups and namespaces will likely fail",
            file=sys.stderr,
        )
    failpoints.configure()
    settings, note = with_admin_token(settings)

    def ready(r: Any) -> None:
        print_ready(r)
        if note:
            print(note, flush=True)

    await serve(settings, on_ready=ready)
    return 0


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.db.migrate import migrate

    conn = await _connect(settings)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    _out(
        args,
        {"applied": applied},
        f"applied migrations {applied}" if applied else "schema is up to date",
    )
    return 0


async def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scheduler import store

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
    request = store.JobRequest(
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
        from scheduler.arrays_cli import submit_array_cli

        return await submit_array_cli(settings, args, request)
    conn = await _connect(settings)
    try:
        row = await store.submit(conn, request)
        if not args.wait:
            _out(args, store.record_to_dict(row), str(row["id"]))
            return 0
        if not args.json:
            print(row["id"], file=sys.stderr)
        if args.quiet or args.json:
            final = await store.wait(conn, row["id"])
        else:
            from scheduler.cli_follow import follow

            final = await follow(conn, settings, row["id"], attempt=None)
    finally:
        await conn.close()
    _out(args, store.record_to_dict(final), escape(_describe(final)), human_to=sys.stderr)
    return job_exit_code(final)


async def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler import store

    conn = await _connect(settings)
    try:
        rows = await store.list_jobs(
            conn, tenant=args.tenant, state=args.state, limit=args.limit, array_id=args.array
        )
    finally:
        await conn.close()
    if args.json:
        print(store.dumps([store.record_to_dict(r) for r in rows]))
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

    from scheduler import store

    conn = await _connect(settings)
    try:
        row = await store.get(conn, args.id)
    finally:
        await conn.close()
    if args.json:
        print(store.dumps(store.record_to_dict(row)))
        return 0
    for key, value in store.record_to_dict(row).items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        print(f"{key:>18}: {escape(text)}")
    return 0


async def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler import store
    from scheduler.cli_follow import follow, output_files

    if args.follow and args.json:
        raise UsageError("--follow streams the output as it comes; --json prints it once: give one")
    conn = await _connect(settings)
    try:
        row = await store.get(conn, args.id)
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
        print(store.dumps(data))
        return 0
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        stream.write(files.read(name))
        stream.flush()
    return 0


async def cmd_images(settings: Settings, args: argparse.Namespace) -> int:
    import anyio

    from scheduler.runtime.images import ImageStore

    images = ImageStore(settings.paths.images_dir)
    if args.images_command == "add":
        info = await anyio.to_thread.run_sync(images.add, args.name, list(args.paths))
        found = [info]
    else:
        found = await anyio.to_thread.run_sync(images.all)
    data = [
        {"name": i.name, "layers": i.layers, "size_bytes": i.size_bytes, "sources": i.sources}
        for i in found
    ]
    human = "\n".join(
        f"{escape(i.name)}\t{i.layers} layer(s)\t{format_bytes(i.size_bytes)}" for i in found
    )
    _out(args, data if args.images_command == "list" else data[0], human or "no images")
    return 0


async def cmd_billing(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.accounting import billing as billing_export

    if args.billing_command in ("close", "verify"):
        return await statements_cli.cmd(settings, args)
    if args.billing_command == "export":
        _export_window(args)
        billing_export.check_window(args.start, args.end)  # before connecting: fail fast
        if args.output is not None and not args.output.parent.is_dir():
            raise UsageError(f"--output {args.output}: directory {args.output.parent} not found")
    conn = await _connect(settings)
    try:
        if args.billing_command == "export":
            fmt = args.format or ("json" if args.json else "csv")
            text, found = await billing_export.export_counted(
                conn,
                start=args.start,
                end=args.end,
                fmt=fmt,
                tenant=args.tenant,
                group_by=args.group_by,
            )
        else:
            return await _billing_check(settings, args, conn)
    finally:
        await conn.close()
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    window = f"[{args.start.isoformat()}, {args.end.isoformat()})"
    if not found:
        who = f" of tenant {escape(args.tenant)}" if args.tenant else ""
        print(f"scheduler: no usage{who} in {window}: the export has no rows", file=sys.stderr)
    return 0


def _export_window(args: argparse.Namespace) -> None:
    """--from/--to or --last: [start, end) in UTC."""
    from datetime import UTC, datetime

    if args.last is not None and args.start is not None:
        raise UsageError("give --from or --last, not both")
    if args.last is None and args.start is None:
        raise UsageError("give the window: --from DATE [--to DATE] or --last 30d")
    if args.end is None:
        args.end = datetime.now(UTC)
    if args.last is not None:
        args.start = args.end - args.last


async def _billing_check(settings: Settings, args: argparse.Namespace, conn: Any) -> int:
    from datetime import UTC, datetime

    import anyio

    from scheduler import store
    from scheduler.accounting import billing as billing_export
    from scheduler.accounting.reconcile import check_metrics, fetch_metrics, reconcile
    from scheduler.cgroups.detect import open_driver

    start = args.start or datetime(1970, 1, 1, tzinfo=UTC)
    end = args.end or datetime(9999, 1, 1, tzinfo=UTC)
    billing_export.check_window(start, end)
    driver = None
    if not args.no_cgroups:
        try:
            driver = open_driver(settings.cgroups.root)
        except SchedulerError as exc:
            raise SchedulerError(
                f"cannot check the tenants' cgroups: {exc} (--no-cgroups skips them)"
            ) from exc
    checked, found = await reconcile(
        conn,
        start=start,
        end=end,
        node=settings.node.name,
        driver=driver,
        cgroup_root=settings.cgroups.root,
    )
    if not args.no_metrics:
        url = args.metrics_url or f"http://{settings.http.addr}/metrics"
        try:
            text = await anyio.to_thread.run_sync(fetch_metrics, url)
        except (OSError, ValueError) as exc:
            print(f"scheduler: note: /metrics not checked ({url}): {exc}", file=sys.stderr)
        else:
            found.extend(await check_metrics(conn, settings.node.name, text))
    verdict = f"{len(found)} discrepancies" if found else "the books add up"
    if args.json:
        print(store.dumps({"jobs_checked": checked, "discrepancies": [str(d) for d in found]}))
        # A failed check says so where a script's log looks, also with --json.
        if found:
            print(f"checked {checked} finished jobs: {verdict}", file=sys.stderr)
    else:
        for discrepancy in found:
            print(escape(str(discrepancy)))
        print(f"checked {checked} finished jobs: {verdict}", file=sys.stderr)
    return 1 if found else 0


def _describe(row: Any) -> str:
    text = f"job {row['id']}: {row['state']}"
    if row["exit_code"] is not None:
        text += f" (exit code {row['exit_code']})"
    if row["signal"] is not None:
        text += f" (signal {row['signal']})"
    if row["error"]:
        text += f": {row['error']}"
    return text


def _out(args: argparse.Namespace, data: Any, human: str, human_to: Any = None) -> None:
    from scheduler import store

    if args.json:
        print(store.dumps(data))
    else:
        print(human, file=human_to or sys.stdout)


async def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from scheduler.api.auth import create_token, revoke_token

    conn = await _connect(settings)
    try:
        if args.action == "create":
            try:
                token_id, token = await create_token(conn, args.tenant, args.description)
            except asyncpg.ForeignKeyViolationError as exc:
                raise SchedulerError(f"unknown tenant {escape(args.tenant)!r}") from exc
            _out(args, {"id": token_id, "tenant": args.tenant, "token": token}, token)
            return 0
        if not await revoke_token(conn, args.id):
            raise SchedulerError(f"no live token with id {args.id}")
        _out(args, {"id": args.id, "revoked": True}, f"token {args.id} revoked")
        return 0
    finally:
        await conn.close()


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
    "tokens": cmd_tokens,
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "submit": cmd_submit,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "logs": cmd_logs,
    "images": cmd_images,
    "billing": cmd_billing,
}

if __name__ == "__main__":
    sys.exit(main())
