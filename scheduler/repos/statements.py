"""Closed statements: sealing a month (the lock, the period, each tenant's statement and the
usage rows it covers) and reading them back to verify (in the caller's transaction)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q


async def caller_is_tenant(conn: Conn) -> bool:
    """Whether the session's role is a tenant's (scheduler.caller_is_tenant)."""
    return bool(await conn.fetchval(q("billing_caller_is_tenant")))


async def lock_periods(conn: Conn) -> None:
    """One close at a time (to the end of the transaction)."""
    await conn.execute(q("billing_lock_periods"))


async def now(conn: Conn) -> datetime:
    """The database's clock at the start of the transaction."""
    value: datetime = await conn.fetchval(q("billing_now"))
    return value


async def period_closed(conn: Conn, month: date) -> asyncpg.Record | None:
    """When and by whom ``month`` was closed (``closed_at``, ``closed_by``), or None."""
    return await conn.fetchrow(q("billing_period_closed"), month)


async def close_period(conn: Conn, month: date) -> None:
    """Record ``month`` as closed."""
    await conn.fetchval(q("billing_close_period"), month)


async def add_statement(
    conn: Conn,
    month: date,
    tenant: str,
    *,
    body: str,
    sha256: str,
    totals: str,
    lines: int,
    usage_rows: int,
    late_rows: int,
) -> Any:
    """Insert one tenant's statement of ``month`` (``totals``: JSON text); its id."""
    return await conn.fetchval(
        q("billing_add_statement"),
        month,
        tenant,
        body,
        sha256,
        totals,
        lines,
        usage_rows,
        late_rows,
    )


async def add_statement_usage(
    conn: Conn, statement_id: Any, tenant: str, job_ids: list[int], seqs: list[int]
) -> None:
    """Record the usage rows (job id, seq) statement ``statement_id`` priced."""
    await conn.execute(q("billing_add_statement_usage"), statement_id, tenant, job_ids, seqs)


async def statements(conn: Conn, month: date | None, tenant: str | None) -> list[asyncpg.Record]:
    """Closed statements, oldest first (of ``month`` / ``tenant`` only when given)."""
    return await conn.fetch(q("billing_statements"), month, tenant)


async def statement_rows(conn: Conn, statement_id: Any) -> list[asyncpg.Record]:
    """The usage rows statement ``statement_id`` covers, as they are now."""
    return await conn.fetch(q("billing_statement_rows"), statement_id)


async def statement_coverage(conn: Conn, statement_id: Any) -> Any:
    """How many usage rows statement ``statement_id`` recorded as covered."""
    return await conn.fetchval(q("billing_statement_coverage"), statement_id)
