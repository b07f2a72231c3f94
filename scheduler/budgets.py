"""Tenant budgets (issue 19): the operator sets a tenant's budget; what its subtree spent.

Spend is kept by the database as usage rows arrive (migrations/0017: scheduler.tenant_spend,
priced as the billing export prices, per tenant, UTC month and currency); the claim holds a
subtree whose budget is reached. This module checks budgets and is what the CLI and the HTTP
API call to write and read them (the statements: scheduler/repos/budgets.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Literal

from scheduler.errors import BadBudget

if TYPE_CHECKING:
    import asyncpg

    from scheduler.db.pool import Conn

Period = Literal["month", "total"]
Action = Literal["hold", "freeze"]
PERIODS: tuple[Period, ...] = ("month", "total")
ACTIONS: tuple[Action, ...] = ("hold", "freeze")
CURRENCY = re.compile(r"^[A-Z]{3}$")
# Far more than any budget needs, and small enough that no one stores a 1000-digit number.
MAX_AMOUNT = Decimal("1e15")
MAX_PLACES = 10


@dataclass(frozen=True)
class Budget:
    """What the operator asks: amount None clears the budget."""

    amount: Decimal | None
    currency: str = "USD"
    period: Period = "month"
    action: Action = "hold"


def parse_amount(text: str) -> Decimal | None:
    """A budget amount: a non-negative decimal (at most 10 places), or 'none' to clear."""
    if text.strip().lower() == "none":
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise BadBudget(f"budget amount {text!r} is not a number: e.g. 100 or 0.05") from None
    return check_amount(value)


def check_amount(value: Decimal) -> Decimal:
    if not value.is_finite() or value < 0 or value > MAX_AMOUNT:
        raise BadBudget(f"budget amount {value} must be in [0, {MAX_AMOUNT:f}]")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_PLACES:
        raise BadBudget(f"budget amount {value} has more than {MAX_PLACES} decimal places")
    return value


def check(budget: Budget) -> Budget:
    """The budget, or BadBudget naming what is wrong."""
    if budget.amount is not None:
        check_amount(budget.amount)
    if not CURRENCY.match(budget.currency):
        raise BadBudget(f"currency {budget.currency!r} must be 3 capital letters, e.g. USD")
    if budget.period not in PERIODS:
        raise BadBudget(f"period {budget.period!r} must be one of {', '.join(PERIODS)}")
    if budget.action not in ACTIONS:
        raise BadBudget(f"action {budget.action!r} must be one of {', '.join(ACTIONS)}")
    return budget


async def set_budget(conn: Conn, tenant: str, budget: Budget) -> asyncpg.Record:
    """Set (or clear) ``tenant``'s budget; the database refuses a tenant caller."""
    from scheduler.repos import budgets as repo

    check(budget)
    return await repo.set_budget(
        conn,
        tenant,
        amount=budget.amount,
        currency=budget.currency if budget.amount is not None else None,
        period=budget.period,
        action=budget.action,
    )


async def status(conn: Conn, tenant: str | None = None) -> list[asyncpg.Record]:
    """Every budget (or ``tenant``'s) with its subtree's spend in the current period."""
    from scheduler.repos import budgets as repo

    return await repo.status(conn, tenant)
