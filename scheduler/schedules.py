"""Schedules: add, list, read, pause, resume and remove them (CLI and HTTP); the statements
are in scheduler/repos/schedules.py.

The database checks every row (schedule name, 5 cron fields, a known time zone, the job
template tried as a real job insert); here the expression is also parsed with croniter, so a
bad one is refused at add time instead of being disabled later by an agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from scheduler import jobdefaults, names

# The exceptions live in scheduler/errors.py; these names are this module's too (callers
# catch schedules.ScheduleNotFound and the like).
from scheduler.errors import ScheduleExists as ScheduleExists  # noqa: PLC0414
from scheduler.errors import ScheduleNotFound as ScheduleNotFound  # noqa: PLC0414
from scheduler.errors import ScheduleRefused as ScheduleRefused  # noqa: PLC0414

if TYPE_CHECKING:
    import asyncpg

    from scheduler.db.pool import Conn

# croniter is imported by the functions that parse (the CLI's start-up does not pay for it).
if TYPE_CHECKING:
    from scheduler import cron

OVERLAPS = ("skip", "queue")
# The database's rule too (schedules_before_write): names travel in URLs and job rows.
SCHEDULE_NAME = names.SCHEDULE_NAME
MAX_LIST = 1000


@dataclass(frozen=True)
class ScheduleRequest:
    """A schedule as a client asks for it; ``job`` holds the job's fields (argv at least)."""

    name: str
    cron: str
    job: dict[str, Any]
    tenant: str = jobdefaults.TENANT
    timezone: str = "UTC"
    overlap: str = "skip"
    enabled: bool = True


def check(request: ScheduleRequest, now: datetime | None = None) -> cron.CronSpec:
    """What can be checked without the database; the database checks the rest."""
    from scheduler import cron

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
    from scheduler.repos import schedules as repo

    moment = now or datetime.now(UTC)
    spec = check(request, moment)
    first = spec.next_after(moment) if request.enabled else None
    return await repo.insert(
        conn,
        tenant=request.tenant,
        name=request.name,
        cron=spec.cron,
        timezone=spec.timezone,
        job=request.job,
        overlap=request.overlap,
        enabled=request.enabled,
        first=first,
    )


async def list_schedules(
    conn: Conn,
    *,
    tenant: str | None = None,
    within: frozenset[str] | None = None,
    limit: int = MAX_LIST,
) -> list[asyncpg.Record]:
    """Schedules by tenant and name; ``within`` limits them to a caller's tenants."""
    from scheduler.repos import schedules as repo

    scope = sorted(within) if within is not None else None
    return await repo.list_schedules(conn, tenant, scope, limit)


async def get(conn: Conn, tenant: str, name: str) -> asyncpg.Record:
    from scheduler.repos import schedules as repo

    return await repo.get(conn, tenant, name)


async def set_enabled(
    conn: Conn, tenant: str, name: str, enabled: bool, now: datetime | None = None
) -> asyncpg.Record:
    """Pause, or resume from ``now``: due times missed while paused are not made up."""
    from scheduler import cron
    from scheduler.repos import schedules as repo

    row = await get(conn, tenant, name)
    first = None
    if enabled:
        try:
            first = cron.next_after(row["cron"], row["timezone"], now or datetime.now(UTC))
        except cron.CronError as exc:
            raise ScheduleRefused(f"cannot resume schedule {name!r}: {exc}", exc.field) from exc
    return await repo.set_enabled(conn, tenant, name, enabled, first)


async def remove(conn: Conn, tenant: str, name: str) -> asyncpg.Record:
    """Delete a schedule; the jobs it made stay (and keep its name in ``jobs.schedule``)."""
    from scheduler.repos import schedules as repo

    return await repo.delete(conn, tenant, name)
