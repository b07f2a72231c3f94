"""``scheduler billing close --period YYYY-MM`` and ``scheduler billing verify``: the
operator's closed statements (scheduler.accounting.statements)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from scheduler.cli.command import add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import dumps, escape

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_statements(actions: Any) -> None:
    """Add ``close`` and ``verify`` to the ``billing`` subcommands."""
    close = actions.add_parser(
        "close",
        help="seal a past UTC month: one statement per tenant, stored with its SHA-256 "
        "(operator only)",
    )
    add_common(close)
    close.add_argument("--period", required=True, help="the month, YYYY-MM (e.g. 2026-11)")
    verify = actions.add_parser(
        "verify",
        help="recompute every closed statement from the usage rows and rates; exit 1 and "
        "name each one that differs",
    )
    add_common(verify)
    verify.add_argument("--period", help="only this month, YYYY-MM")
    verify.add_argument("--tenant", help="only this tenant's statements")


async def cmd_statements(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``billing close`` or ``billing verify``."""
    # The pricing code (structlog...) only for this command: `scheduler jobs` stays light.
    from scheduler.accounting import statements

    month = None if args.period is None else statements.parse_month(args.period)
    conn = await connect(settings)
    try:
        if month is not None and args.billing_command == "close":  # --period is required
            made = await statements.close(conn, month)
        else:
            checked, found = await statements.verify(conn, month, args.tenant)
    finally:
        await conn.close()
    if args.billing_command == "close":
        if args.json:
            print(dumps({"period": args.period, "statements": [s.summary() for s in made]}))
        else:
            for s in made:
                print(
                    f"{escape(s.tenant)}\t{statements.totals_text(s.totals)}\t{s.lines} lines"
                    f"\t{s.late_rows} late rows\tsha256 {s.sha256}"
                )
            print(f"closed {escape(args.period)}: {len(made)} statements", file=sys.stderr)
        return 0
    if args.json:
        print(dumps({"statements_checked": checked, "differences": [str(d) for d in found]}))
    else:
        for difference in found:
            print(escape(str(difference)))
        verdict = f"{len(found)} differences" if found else "every one verifies"
        print(f"checked {checked} closed statements: {verdict}", file=sys.stderr)
    return 1 if found else 0
