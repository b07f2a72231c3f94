"""The schedules repository: insert, list, read, pause or resume, and delete schedules;
the database checks every row (name, cron fields, time zone, the job template)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.errors import ScheduleExists, ScheduleNotFound, ScheduleRefused


async def insert(
    conn: Conn,
    *,
    tenant: str,
    name: str,
    cron: str,
    timezone: str,
    job: dict[str, Any],
    overlap: str,
    enabled: bool,
    first: datetime | None,
) -> asyncpg.Record:
    """Create a schedule whose first job comes at ``first`` (None: paused); ScheduleExists,
    or ScheduleRefused naming the field the database refused."""
    try:
        row = await conn.fetchrow(
            q("insert_schedule"), tenant, name, cron, timezone, job, overlap, enabled, first
        )
    except asyncpg.UniqueViolationError as exc:
        raise ScheduleExists(
            f"tenant {tenant!r} already has a schedule named {name!r}", "name"
        ) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise ScheduleRefused(f"unknown tenant {tenant!r}", "tenant") from exc
    except (
        asyncpg.IntegrityConstraintViolationError,
        asyncpg.DataError,
        asyncpg.InsufficientPrivilegeError,
    ) as exc:
        raise ScheduleRefused(str(exc), getattr(exc, "column_name", None)) from exc
    assert row is not None
    return row


async def list_schedules(
    conn: Conn, tenant: str | None, scope: list[str] | None, limit: int
) -> list[asyncpg.Record]:
    """Schedules by tenant and name; ``scope``: only these tenants' (None: all)."""
    return list(await conn.fetch(q("list_schedules"), tenant, scope, limit))


async def get(conn: Conn, tenant: str, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_schedule"), tenant, name)
    if row is None:
        raise ScheduleNotFound(f"tenant {tenant!r} has no schedule named {name!r}")
    return row


async def set_enabled(
    conn: Conn, tenant: str, name: str, enabled: bool, first: datetime | None
) -> asyncpg.Record:
    """Pause, or resume with the next job at ``first``."""
    row = await conn.fetchrow(q("set_schedule_enabled"), tenant, name, enabled, first)
    if row is None:
        raise ScheduleNotFound(f"tenant {tenant!r} has no schedule named {name!r}")
    return row


async def delete(conn: Conn, tenant: str, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(q("delete_schedule"), tenant, name)
    if row is None:
        raise ScheduleNotFound(f"tenant {tenant!r} has no schedule named {name!r}")
    return row
