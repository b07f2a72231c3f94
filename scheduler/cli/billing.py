"""``scheduler billing export|check|close|verify``: priced usage exports, the reconciliation
of the books, and (scheduler.cli.statements) the operator's closed monthly statements. The
accounting code is imported by the handlers, not by the parser."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.cli.args import UsageError, last_window
from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import dumps, escape
from scheduler.cli.statements import add_statements, cmd_statements
from scheduler.errors import SchedulerError

if TYPE_CHECKING:
    from scheduler.config import Settings

# Formats of `billing export` (scheduler.accounting.export.FORMATS; a test keeps them equal).
EXPORT_FORMATS = ("csv", "json", "focus")


def _instant(text: str) -> Any:
    from scheduler.accounting.billing import parse_instant

    return parse_instant(text)


_instant.__name__ = "instant"


def add_billing(sub: Subparsers) -> None:
    from scheduler.config import UNIT_ENV_FILE

    billing = sub.add_parser("billing", help="priced usage exports and reconciliation")
    actions = billing.add_subparsers(dest="billing_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", help="priced usage of [--from, --to) as csv, json or FOCUS 1.2 csv"
    )
    add_common(export)
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
    add_common(check)
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
    add_statements(actions)


async def cmd_billing(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.accounting import billing as billing_export

    if args.billing_command in ("close", "verify"):
        return await cmd_statements(settings, args)
    if args.billing_command == "export":
        _export_window(args)
        billing_export.check_window(args.start, args.end)  # before connecting: fail fast
        if args.output is not None and not args.output.parent.is_dir():
            raise UsageError(f"--output {args.output}: directory {args.output.parent} not found")
    conn = await connect(settings)
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
        print(dumps({"jobs_checked": checked, "discrepancies": [str(d) for d in found]}))
        # A failed check says so where a script's log looks, also with --json.
        if found:
            print(f"checked {checked} finished jobs: {verdict}", file=sys.stderr)
    else:
        for discrepancy in found:
            print(escape(str(discrepancy)))
        print(f"checked {checked} finished jobs: {verdict}", file=sys.stderr)
    return 1 if found else 0


BILLING = Command("billing", add_billing, cmd_billing, logs=True)
