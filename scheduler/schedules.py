"""The schedule store: add, list, read, pause, resume and remove schedules (CLI and HTTP).

The database checks every row (schedule name, 5 cron fields, a known time zone, the job
template tried as a real job insert); here the expression is also parsed with croniter, so a
bad one is refused at add time instead of being disabled later by an agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from scheduler import names
from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.errors import SchedulerError

# croniter is imported by the functions that parse (the CLI's start-up does not pay for it).
if TYPE_CHECKING:
    from scheduler import cron

OVERLAPS = ("skip", "queue")
# The database's rule too (schedules_before_write): names travel in URLs and job rows.
SCHEDULE_NAME = names.SCHEDULE_NAME
MAX_LIST = 1000


class ScheduleRefused(SchedulerError):
    """The schedule was refused."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ScheduleExists(ScheduleRefused):
    """A schedule of that name already exists for the tenant."""


class ScheduleNotFound(SchedulerError):
    """No such schedule."""


@dataclass(frozen=True)
class ScheduleRequest:
    """A schedule as a client asks for it; ``job`` holds the job's fields (argv at least)."""

    name: str
    cron: str
    job: dict[str, Any]
    tenant: str = "default"
    timezone: str = "UTC"
    overlap: str = "skip"
    enabled: bool = True


def check(request: ScheduleRequest, now: datetime | None = None) -> cron.CronSpec:
    """What can be checked without the database; the database checks the rest."""
    from scheduler import cron  # noqa: PLC0415 (croniter: only when parsing)

    if not SCHEDULE_NAME.match(request.name):
        raise ScheduleRefused(
            f"schedule name {request.name!r} is not valid: expected {names.SCHEDULE_NAME_SHAPE}",
            "name",
        )
    if request.overlap not in OVERLAPS:
        raise ScheduleRefused(f"overlap must be skip or queue: got {request.overlap!r}", "overlap")
    try:
        return cron.check(request.cron, request.timezone, now)
    except cron.CronError as exc:
        raise ScheduleRefused(str(exc), exc.field) from exc


async def add(conn: Conn, request: ScheduleRequest, now: datetime | None = None) -> asyncpg.Record:
    """Create a schedule, planned from ``now``; its first job comes at the first due time."""
    moment = now or datetime.now(UTC)
    spec = check(request, moment)
    first = spec.next_after(moment) if request.enabled else None
    try:
        row = await conn.fetchrow(
            q("insert_schedule"),
            request.tenant,
            request.name,
            spec.cron,
            spec.timezone,
            request.job,
            request.overlap,
            request.enabled,
            first,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ScheduleExists(
            f"tenant {request.tenant!r} already has a schedule named {request.name!r}", "name"
        ) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise ScheduleRefused(f"unknown tenant {request.tenant!r}", "tenant") from exc
    except (
        asyncpg.IntegrityConstraintViolationError,
        asyncpg.DataError,
        asyncpg.InsufficientPrivilegeError,
    ) as exc:
        raise ScheduleRefused(str(exc), getattr(exc, "column_name", None)) from exc
    assert row is not None
    return row


async def list_schedules(
    conn: Conn,
    *,
    tenant: str | None = None,
    within: frozenset[str] | None = None,
    limit: int = MAX_LIST,
) -> list[asyncpg.Record]:
    """Schedules by tenant and name; ``within`` limits them to a caller's tenants."""
    scope = sorted(within) if within is not None else None
    return list(await conn.fetch(q("list_schedules"), tenant, scope, limit))


async def get(conn: Conn, tenant: str, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_schedule"), tenant, name)
    if row is None:
        raise ScheduleNotFound(f"tenant {tenant!r} has no schedule named {name!r}")
    return row


async def set_enabled(
    conn: Conn, tenant: str, name: str, enabled: bool, now: datetime | None = None
) -> asyncpg.Record:
    """Pause, or resume from ``now``: due times missed while paused are not made up."""
    from scheduler import cron  # noqa: PLC0415 (croniter: only when parsing)

    row = await get(conn, tenant, name)
    first = None
    if enabled:
        try:
            first = cron.next_after(row["cron"], row["timezone"], now or datetime.now(UTC))
        except cron.CronError as exc:
            raise ScheduleRefused(f"cannot resume schedule {name!r}: {exc}", exc.field) from exc
    updated = await conn.fetchrow(q("set_schedule_enabled"), tenant, name, enabled, first)
    if updated is None:
        raise ScheduleNotFound(f"tenant {tenant!r} has no schedule named {name!r}")
    return updated


async def remove(conn: Conn, tenant: str, name: str) -> asyncpg.Record:
    """Delete a schedule; the jobs it made stay (and keep its name in ``jobs.schedule``)."""
    row = await conn.fetchrow(q("delete_schedule"), tenant, name)
    if row is None:
        raise ScheduleNotFound(f"tenant {tenant!r} has no schedule named {name!r}")
    return row
