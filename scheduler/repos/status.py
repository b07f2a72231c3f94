"""Reads for what the API shows people: the status page (overview and job page) and the
closed billing statements. Read-only; ``scope`` is the caller's tenants (None: all)."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q


async def nodes(conn: Conn) -> list[asyncpg.Record]:
    """Every node with its lease and load."""
    return list(await conn.fetch(q("list_nodes")))


async def queued(conn: Conn, scope: list[str] | None, limit: int) -> list[asyncpg.Record]:
    """Queued jobs, first to run first."""
    return list(await conn.fetch(q("overview_queued"), scope, limit))


async def running(conn: Conn, scope: list[str] | None, limit: int) -> list[asyncpg.Record]:
    """Running and frozen jobs, newest first, each with its latest usage period."""
    return list(await conn.fetch(q("overview_running"), scope, limit))


async def failures(conn: Conn, scope: list[str] | None, limit: int) -> list[asyncpg.Record]:
    """Failed, timed-out and lost jobs, latest first."""
    return list(await conn.fetch(q("overview_failures"), scope, limit))


async def job_usage(conn: Conn, job_id: int, limit: int) -> list[asyncpg.Record]:
    """A job's latest usage rows, newest first."""
    return list(await conn.fetch(q("job_page_usage"), job_id, limit))


async def billing_rates(conn: Conn) -> list[asyncpg.Record]:
    """Every price (scheduler.accounting.billing.rate_from_row reads them)."""
    return list(await conn.fetch(q("billing_rates")))


async def billing_usage(
    conn: Conn, start: datetime, end: datetime, tenant: str | None
) -> list[asyncpg.Record]:
    """Usage rows of [start, end) to price (scheduler.accounting.billing.usage_row)."""
    return list(await conn.fetch(q("billing_usage"), start, end, tenant))


async def closed_statements(
    conn: Conn, month: date | None, tenant: str | None
) -> list[asyncpg.Record]:
    """Closed billing statements, oldest first; one month and one tenant only if given."""
    return list(await conn.fetch(q("billing_statements"), month, tenant))
