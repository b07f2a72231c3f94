"""The tenant budgets repository: set a tenant's budget, read budgets with their spend
(migrations/0017 keeps the spend as usage rows arrive)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.db.refusals import refusal
from scheduler.errors import BadBudget, ControlRefused, TenantNotFound


async def set_budget(
    conn: Conn,
    tenant: str,
    *,
    amount: Decimal | None,
    currency: str | None,
    period: str,
    action: str,
) -> asyncpg.Record:
    """Write ``tenant``'s budget (amount None clears it); the database refuses a tenant
    caller (ControlRefused) and values outside its checks (BadBudget)."""
    try:
        row = await conn.fetchrow(q("set_tenant_budget"), tenant, amount, currency, period, action)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise ControlRefused(f"only the operator sets a tenant's budget: {exc}") from exc
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise BadBudget(refusal(exc)) from exc
    if row is None:
        raise TenantNotFound(f"no tenant named {tenant!r}")
    return row


async def status(conn: Conn, tenant: str | None = None) -> list[asyncpg.Record]:
    """Every budget (or ``tenant``'s) with its subtree's spend in the current period."""
    return list(await conn.fetch(q("budget_status"), tenant))
