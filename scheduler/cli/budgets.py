"""``scheduler tenants budget NAME [AMOUNT] [--currency C] [--period P] [--action A]``."""

from __future__ import annotations

import argparse
from typing import Any

from scheduler.budgets import ACTIONS, PERIODS
from scheduler.cli.command import add_common
from scheduler.cli.output import dumps, escape, record


def add_budget(actions: Any) -> None:
    """Add ``budget`` to the ``tenants`` actions."""
    parser = actions.add_parser(
        "budget",
        help="set a tenant's budget (operator), or show it and what its subtree spent",
    )
    add_common(parser)
    parser.add_argument("name", help="the tenant's name")
    parser.add_argument(
        "amount",
        nargs="?",
        help="most the subtree may spend per period, e.g. 100 ('none' clears; omit to show)",
    )
    parser.add_argument("--currency", default="USD", help="ISO 4217 code (default USD)")
    parser.add_argument(
        "--period",
        choices=PERIODS,
        default="month",
        help="month (UTC calendar month, the default) or total (all time)",
    )
    parser.add_argument(
        "--action",
        choices=ACTIONS,
        default="hold",
        help="at the budget: hold new jobs (default), or also freeze running ones",
    )


async def cmd_budget(conn: Any, args: argparse.Namespace) -> int:
    from scheduler import budgets

    if args.amount is not None:
        budget = budgets.Budget(
            amount=budgets.parse_amount(args.amount),
            currency=args.currency,
            period=args.period,
            action=args.action,
        )
        await budgets.set_budget(conn, args.name, budget)
    rows = await budgets.status(conn, args.name)
    if args.json:
        print(dumps(record(rows[0]) if rows else {"tenant": args.name}))
        return 0
    if not rows:
        print(f"tenant {escape(args.name)}: no budget")
        return 0
    r = rows[0]
    print(
        f"tenant {escape(r['tenant'])}: budget {r['budget']} {r['currency']} per {r['period']}"
        f" (action {r['action']}), spent {r['spend']:.6f}" + (" REACHED" if r["reached"] else "")
    )
    return 0
