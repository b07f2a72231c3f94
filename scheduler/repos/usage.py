"""Usage and billing rows: the sampler's and the spool's periods, the marks they continue
from, the counts /metrics shows, and the reads of the billing export and the reconciliation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from scheduler.db.pool import Db
from scheduler.db.queries import q

# --- the sampler and the spool ------------------------------------------------------------


async def usage_marks(
    db: Db, job_ids: list[int], attempts: list[int], *, timeout_seconds: float | None = None
) -> list[asyncpg.Record]:
    """Where each attempt's last committed period ended (one row per attempt that has one)."""
    return await db.fetch(q("usage_marks"), job_ids, attempts, timeout=timeout_seconds)


async def insert_usage_periods(
    db: Db, columns: Sequence[list[Any]], *, timeout_seconds: float | None = None
) -> None:
    """Insert sampled periods, given as the twelve columns insert_usage_periods unnests
    (accounting/spoolfile.columns), in one statement."""
    await db.execute(q("insert_usage_periods"), *columns, timeout=timeout_seconds)


async def job_state_counts(db: Db, *, timeout_seconds: float | None = None) -> list[asyncpg.Record]:
    """Jobs per (tenant, state): ``tenant``, ``state``, ``n``."""
    return await db.fetch(q("job_state_counts"), timeout=timeout_seconds)


async def budget_status(
    db: Db, tenant: str | None = None, *, timeout_seconds: float | None = None
) -> list[asyncpg.Record]:
    """Every budget (or ``tenant``'s) with its subtree's spend this period."""
    return await db.fetch(q("budget_status"), tenant, timeout=timeout_seconds)


# --- billed totals and reconciliation -----------------------------------------------------


async def node_billed_totals(db: Db, node: str) -> list[asyncpg.Record]:
    """What ``node`` billed each tenant so far (tenant, cpu_seconds, io bytes)."""
    return await db.fetch(q("node_billed_totals"), node)


async def tenant_parents(db: Db) -> list[tuple[str, str | None]]:
    """Every tenant as (name, parent)."""
    return [(r["name"], r["parent"]) for r in await db.fetch(q("check_tenants"))]


async def node_running(db: Db, node: str) -> list[asyncpg.Record]:
    """The jobs running on ``node`` (id, tenant)."""
    return await db.fetch(q("check_node_running"), node)


async def node_billed_since(db: Db, node: str, since: datetime) -> list[asyncpg.Record]:
    """Per tenant, the cpu ``node`` billed for periods since ``since`` and how many attempts
    it came from."""
    return await db.fetch(q("check_node_billed"), node, since)


async def finished_jobs(db: Db, start: datetime, end: datetime) -> list[asyncpg.Record]:
    """The jobs that finished in [start, end), as the reconciliation checks them."""
    return await db.fetch(q("check_jobs"), start, end)


async def usage_of_jobs(db: Db, job_ids: list[int]) -> list[asyncpg.Record]:
    """Every usage row of the jobs ``job_ids``."""
    return await db.fetch(q("check_usage"), job_ids)


# --- the billing export (in the caller's transaction) -------------------------------------


async def tenant_exists(db: Db, tenant: str) -> bool:
    """Whether tenant ``tenant`` exists."""
    return bool(await db.fetchval(q("billing_tenant_exists"), tenant))


async def rates(db: Db) -> list[asyncpg.Record]:
    """Every row of scheduler.rates."""
    return await db.fetch(q("billing_rates"))


async def billing_usage(
    db: Db, start: datetime, end: datetime, tenant: str | None
) -> list[asyncpg.Record]:
    """The usage rows whose period ends in [start, end) (of ``tenant``), but for late rows
    of a closed month."""
    return await db.fetch(q("billing_usage"), start, end, tenant)


async def closed_range(db: Db) -> asyncpg.Record | None:
    """The first and last closed month (``first``, ``last``; NULL when none is)."""
    return await db.fetchrow(q("billing_closed_range"))


async def late_usage(
    db: Db, first: datetime, open_from: datetime, tenant: str | None
) -> list[asyncpg.Record]:
    """Late usage rows of the closed months from ``first`` to ``open_from``, with the period
    that billed them."""
    return await db.fetch(q("billing_late_usage"), first, open_from, tenant)
