"""The ``scheduler`` command: serve, migrate, submit, jobs, show, logs, images, tokens (and,
from :mod:`scheduler.control_cli`, cancel, freeze, thaw and tenants; from
:mod:`scheduler.nodes_cli`, nodes)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from scheduler import control_cli, failpoints, nodes_cli, store
from scheduler import log as logging_setup
from scheduler.accounting import billing as billing_export
from scheduler.accounting.export import FORMATS
from scheduler.accounting.reconcile import reconcile
from scheduler.agent.service import print_ready, serve
from scheduler.api.auth import create_token, revoke_token
from scheduler.cgroups.detect import open_driver
from scheduler.config import UNIT_ENV_FILE, Settings, load_settings, read_environment_file
from scheduler.db.migrate import migrate
from scheduler.db.pool import connect_settings
from scheduler.errors import SchedulerError
from scheduler.runtime.images import ImageStore
from scheduler.units import format_bytes, parse_cores, parse_duration, parse_size

EXIT_USAGE = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with settings")
    parser.add_argument("--database-url", help="Postgres URL (default: the embedded server)")
    parser.add_argument("--state-dir", help="state directory (runs, logs, embedded Postgres)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scheduler", description="Run tenants' jobs as isolated, accounted processes."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the node agent (embedded Postgres if no URL)")
    _add_common(serve)
    serve.add_argument("--cgroup-root", help="cgroup directory name under each hierarchy")
    serve.add_argument("--cgroup-driver", choices=["auto", "v1", "v2"])
    serve.add_argument("--node-name", help="this node's name (default: host name)")
    serve.add_argument("--max-running", type=int, help="attempts run at once on this node")
    serve.add_argument("--poll-interval", type=float, help="safety poll period in seconds")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["console", "json"])

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    _add_common(migrate)

    submit = sub.add_parser("submit", help="submit a job: scheduler submit [options] -- CMD...")
    _add_common(submit)
    submit.add_argument("--tenant", default="default")
    submit.add_argument("--name", default="")
    submit.add_argument("--cpu", type=parse_cores, default=None, help="cores, e.g. 0.5")
    submit.add_argument("--memory", type=parse_size, default=None, help="e.g. 256M, 1G")
    submit.add_argument("--pids", type=int, default=None, help="max processes")
    submit.add_argument("--timeout", type=parse_duration, default=None, help="e.g. 30s, 5m")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--max-attempts", type=int, default=1)
    submit.add_argument("--cwd", default="/")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--image", help="run on this image's layers (scheduler images list)")
    submit.add_argument(
        "--network", action="store_true", help="keep the host's network (if the node allows it)"
    )
    submit.add_argument("--io-read", type=parse_size, default=None, help="disk read bytes/s")
    submit.add_argument("--io-write", type=parse_size, default=None, help="disk write bytes/s")
    submit.add_argument(
        "--wait", action="store_true", help="wait for the end and exit with the job's exit code"
    )
    submit.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    _add_common(jobs)
    jobs.add_argument("--tenant")
    jobs.add_argument("--state")
    jobs.add_argument("--limit", type=int, default=50)

    show = sub.add_parser("show", help="show one job")
    _add_common(show)
    show.add_argument("id", type=int)

    logs = sub.add_parser("logs", help="print a job's stdout and stderr")
    _add_common(logs)
    logs.add_argument("id", type=int)
    logs.add_argument("--attempt", type=int, help="default: the latest")

    images = sub.add_parser("images", help="manage this node's images (layered root filesystems)")
    images_sub = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    images_add = images_sub.add_parser(
        "add", help="build an image: scheduler images add NAME PATH... (bottom layer first)"
    )
    _add_common(images_add)
    images_add.add_argument("name")
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
    return parser


def _add_access_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = sub.add_parser("tokens", help="API bearer tokens for tenants")
    token_sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", help="print a new token for a tenant")
    _add_common(create)
    create.add_argument("--tenant", required=True)
    create.add_argument("--description", default="")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id")
    _add_common(revoke)
    revoke.add_argument("id", type=int)


def _add_billing(sub: Any) -> None:
    billing = sub.add_parser("billing", help="priced usage exports and reconciliation")
    actions = billing.add_subparsers(dest="billing_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", help="priced usage of [--from, --to) as csv, json or FOCUS 1.2 csv"
    )
    _add_common(export)
    instant = billing_export.parse_instant
    export.add_argument("--from", dest="start", type=instant, required=True, help="UTC, inclusive")
    export.add_argument("--to", dest="end", type=instant, required=True, help="UTC, exclusive")
    export.add_argument("--format", choices=FORMATS, help="default: csv (json with --json)")
    export.add_argument("--tenant", help="only this tenant's usage")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")
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
        "--env-file",
        type=Path,
        help="the agent unit's EnvironmentFile, whose SCHEDULER_* settings apply where no "
        f"flag or environment variable sets them (default {UNIT_ENV_FILE}, when it exists)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
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
    if path is None:
        if not UNIT_ENV_FILE.exists():
            return os.environ
        path = UNIT_ENV_FILE
    # An empty variable counts as unset (as load_settings reads it), so the file's value holds.
    return {**read_environment_file(path), **{k: v for k, v in os.environ.items() if v}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        logging_setup.configure(settings.log_level, settings.log_format)
        handler = COMMANDS[args.command]
        # uvloop (when installed) roughly halves the event loop's cost per request and per job.
        return anyio.run(handler, settings, args, backend_options={"use_uvloop": _has_uvloop()})
    except SchedulerError as exc:
        print(f"scheduler: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print(
            "scheduler: warning: not root; creating cgroups and namespaces will likely fail",
            file=sys.stderr,
        )
    failpoints.configure()
    await serve(settings, on_ready=print_ready)
    return 0


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect_settings(settings)
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
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(
            "scheduler: error: no command given: scheduler submit [options] -- CMD...",
            file=sys.stderr,
        )
        return EXIT_USAGE
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"scheduler: error: --env {item!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_USAGE
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
        image=args.image,
        network=args.network,
        io_read_bps=args.io_read,
        io_write_bps=args.io_write,
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
    conn = await connect_settings(settings)
    try:
        row = await store.submit(conn, request)
        if not args.wait:
            _out(args, store.record_to_dict(row), str(row["id"]))
            return 0
        if not args.json:
            print(row["id"], file=sys.stderr)
        final = await store.wait(conn, row["id"])
    finally:
        await conn.close()
    _out(args, store.record_to_dict(final), _describe(final))
    if final["exit_code"] is not None:
        return int(final["exit_code"])
    return 128 + int(final["signal"]) if final["signal"] else 1


async def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect_settings(settings)
    try:
        rows = await store.list_jobs(conn, tenant=args.tenant, state=args.state, limit=args.limit)
    finally:
        await conn.close()
    if args.json:
        print(store.dumps([store.record_to_dict(r) for r in rows]))
        return 0
    print(
        f"{'ID':>8}  {'TENANT':<12} {'STATE':<10} {'EXIT':>4}  {'CPU_S':>10}  "
        f"{'MEM_PEAK':>9}  COMMAND"
    )
    for r in rows:
        exit_text = "-" if r["exit_code"] is None else str(r["exit_code"])
        cpu_s = "-" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.6f}"
        print(
            f"{r['id']:>8}  {r['tenant']:<12} {r['state']:<10} {exit_text:>4}  "
            f"{cpu_s:>10}  {format_bytes(r['memory_peak_bytes']):>9}  "
            f"{' '.join(r['argv'])[:60]}"
        )
    return 0


async def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect_settings(settings)
    try:
        row = await store.get(conn, args.id)
    finally:
        await conn.close()
    if args.json:
        print(store.dumps(store.record_to_dict(row)))
        return 0
    for key, value in store.record_to_dict(row).items():
        print(f"{key:>18}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0


async def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect_settings(settings)
    try:
        row = await store.get(conn, args.id)
    finally:
        await conn.close()
    if row["attempts"] == 0:
        raise SchedulerError(f"job {args.id} has not started yet: no output")
    attempt = row["attempts"] if args.attempt is None else args.attempt
    if not 1 <= attempt <= row["attempts"]:
        raise SchedulerError(
            f"job {args.id} has no attempt {attempt} (it has had {row['attempts']})"
        )
    if attempt == row["attempts"] and row["node"] not in (None, settings.node_name):
        raise SchedulerError(
            f"job {args.id} attempt {attempt} ran on node {row['node']!r}: its output is there"
        )
    # The monitor makes the directory and each file on the job's first byte: a job that
    # printed nothing has none.
    run_dir = settings.runs_dir / f"{args.id}-{attempt}"
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        path = run_dir / name
        if path.exists():
            stream.write(path.read_text(errors="replace"))
            stream.flush()
    return 0


async def cmd_images(settings: Settings, args: argparse.Namespace) -> int:
    images = ImageStore(settings.images_dir)
    if args.images_command == "add":
        info = await anyio.to_thread.run_sync(images.add, args.name, list(args.paths))
        found = [info]
    else:
        found = await anyio.to_thread.run_sync(images.all)
    data = [
        {"name": i.name, "layers": i.layers, "size_bytes": i.size_bytes, "sources": i.sources}
        for i in found
    ]
    human = "\n".join(f"{i.name}\t{i.layers} layer(s)\t{format_bytes(i.size_bytes)}" for i in found)
    _out(args, data if args.images_command == "list" else data[0], human or "no images")
    return 0


async def cmd_billing(settings: Settings, args: argparse.Namespace) -> int:
    if args.billing_command == "export":
        billing_export.check_window(args.start, args.end)  # before connecting: fail fast
    conn = await connect_settings(settings)
    try:
        if args.billing_command == "export":
            fmt = args.format or ("json" if args.json else "csv")
            text = await billing_export.export(
                conn, start=args.start, end=args.end, fmt=fmt, tenant=args.tenant
            )
        else:
            return await _billing_check(settings, args, conn)
    finally:
        await conn.close()
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


async def _billing_check(settings: Settings, args: argparse.Namespace, conn: Any) -> int:
    start = args.start or datetime(1970, 1, 1, tzinfo=UTC)
    end = args.end or datetime(9999, 1, 1, tzinfo=UTC)
    billing_export.check_window(start, end)
    driver = None
    if not args.no_cgroups:
        try:
            driver = open_driver(settings.cgroup_root)
        except SchedulerError as exc:
            raise SchedulerError(
                f"cannot check the tenants' cgroups: {exc} (--no-cgroups skips them)"
            ) from exc
    checked, found = await reconcile(
        conn,
        start=start,
        end=end,
        node=settings.node_name,
        driver=driver,
        cgroup_root=settings.cgroup_root,
    )
    if args.json:
        print(store.dumps({"jobs_checked": checked, "discrepancies": [str(d) for d in found]}))
    else:
        for discrepancy in found:
            print(discrepancy)
        verdict = f"{len(found)} discrepancies" if found else "the books add up"
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


def _out(args: argparse.Namespace, data: Any, human: str) -> None:
    print(store.dumps(data) if args.json else human)


async def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect_settings(settings)
    try:
        if args.action == "create":
            try:
                token_id, token = await create_token(conn, args.tenant, args.description)
            except asyncpg.ForeignKeyViolationError as exc:
                raise SchedulerError(f"unknown tenant {args.tenant!r}") from exc
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
