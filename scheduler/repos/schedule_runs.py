"""Schedules as the agent runs them: planning first due times, firing due ones (in the
caller's transaction, which locks them), skipping, disabling, and the next due time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from scheduler.db.pool import Conn, Db
from scheduler.db.queries import q


def _key(schedule: asyncpg.Record) -> tuple[Any, Any, Any, Any]:
    """What identifies a schedule as it was read: a changed expression no longer matches."""
    return schedule["tenant"], schedule["name"], schedule["cron"], schedule["timezone"]


async def unplanned(db: Db, limit: int) -> list[asyncpg.Record]:
    """Enabled schedules without a due time (tenant, name, cron, timezone)."""
    return await db.fetch(q("unplanned_schedules"), limit)


async def plan(db: Db, schedule: asyncpg.Record, first: datetime) -> None:
    """Set the first due time of ``schedule`` (a row of :func:`unplanned`), unless its
    expression changed since it was read."""
    await db.execute(q("plan_schedule"), *_key(schedule), first)


async def disable(db: Db, schedule: asyncpg.Record, reason: str) -> None:
    """Turn ``schedule`` (a row of :func:`unplanned` or :func:`due`) off with ``reason``,
    unless its expression changed meanwhile."""
    await db.execute(q("disable_schedule"), *_key(schedule), reason)


async def due(conn: Conn, now: datetime, limit: int) -> list[asyncpg.Record]:
    """The schedules due at ``now``, locked for the caller's transaction."""
    return await conn.fetch(q("due_schedules"), now, limit)


async def unfinished_job(conn: Conn, tenant: str, name: str) -> Any:
    """The id of the schedule's job that has not ended yet, or None."""
    return await conn.fetchval(q("schedule_unfinished_job"), tenant, name)


async def skipped(
    conn: Conn, tenant: str, name: str, due_at: datetime, following: datetime
) -> None:
    """Due time ``due_at`` skipped (a job still runs); next due at ``following``."""
    await conn.execute(q("schedule_skipped"), tenant, name, due_at, following)


async def insert_job(conn: Conn, tenant: str, name: str, job: Any, due_at: datetime) -> Any:
    """Insert the job of due time ``due_at`` from the template ``job``; its id. Raises
    asyncpg.UniqueViolationError when that due time's job exists, and the database's refusal
    when the template is no longer accepted."""
    return await conn.fetchval(q("schedule_insert_job"), tenant, name, job, due_at)


async def fired(
    conn: Conn,
    tenant: str,
    name: str,
    due_at: datetime,
    *,
    following: datetime,
    job_id: int | None,
) -> None:
    """Due time ``due_at`` handled by ``job_id`` (None: its job existed already)."""
    await conn.execute(q("schedule_fired"), tenant, name, due_at, following, job_id)


async def next_due(db: Db) -> Any:
    """The earliest due time of an enabled schedule, or None."""
    return await db.fetchval(q("next_schedule_due"))
