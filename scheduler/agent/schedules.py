"""Fires schedules: one job per due time, whichever agents run and however often they restart.

Each agent runs this loop; they share the work through row locks. A due schedule is locked
(``FOR UPDATE SKIP LOCKED``), its job inserted and its ``next_run_at`` advanced in one
transaction, so another agent either skips the locked row or, once it commits, no longer finds
it due; a unique index on the jobs' (tenant, schedule, due time) stops a second fire even if
that reasoning failed. Nothing is lost across a restart: the due time stays in the row until a
transaction that made its job commits.

The next due time is computed from the clock at firing time, not from the due time fired: a
schedule whose agents were all down for many due times fires once when one is back (for the
first due time missed), then at its next due time after now.

The loop sleeps until the earliest ``next_run_at`` (at most ``max_sleep``), and wakes on the
``scheduler_schedules`` NOTIFY that a new, resumed or changed schedule sends. The clock is
injectable: tests drive due times with a clock of their own instead of waiting minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import asyncpg
import structlog

from scheduler import cron
from scheduler.db.outage import DB_ERRORS, log_failure
from scheduler.repos import listen as channels
from scheduler.repos import schedule_runs

log = structlog.get_logger(__name__)
# The longest sleep: covers a lost NOTIFY and a wall clock that jumped.
MAX_SLEEP = 10.0
MIN_SLEEP = 0.01
# Due schedules fired per transaction; unplanned ones planned per pass.
FIRE_BATCH = 32
PLAN_BATCH = 100
# Errors of the template insert that are the row's fault, not the database's absence.
_REFUSED = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    asyncpg.InsufficientPrivilegeError,
)


class Clock(Protocol):
    """Where the loop reads the time, and how long it really waits for some of it to pass."""

    def now(self) -> datetime: ...

    def real_seconds(self, seconds: float) -> float: ...


class SystemClock:
    """The wall clock (UTC)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def real_seconds(self, seconds: float) -> float:
        return seconds


class ScheduleFirer:
    """Plans and fires the schedules of every tenant."""

    def __init__(
        self, pool: asyncpg.Pool, *, clock: Clock | None = None, max_sleep: float = MAX_SLEEP
    ) -> None:
        self._pool = pool
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_sleep = max_sleep
        self._wake = anyio.Event()

    def wake(self, *_: object) -> None:
        """Look at the schedules now (NOTIFY callback, reconnection)."""
        self._wake.set()

    async def listen(self, conn: asyncpg.Connection) -> None:
        """Subscribe ``conn`` to schedule changes."""
        await channels.listen(conn, channels.SCHEDULES, self.wake)

    async def run(self) -> None:
        """The loop: plan new schedules, fire due ones, sleep until the next due time."""
        while True:
            # A fresh event first: a NOTIFY during the pass ends the sleep below at once.
            wake = self._wake = anyio.Event()
            try:
                planned = await self.plan()
                fired = FIRE_BATCH
                while fired == FIRE_BATCH:
                    fired = await self.fire_due()
                delay = 0.0 if planned == PLAN_BATCH else await self._next_wait()
            except DB_ERRORS as exc:
                log_failure(log, "schedules_failed", exc, retry_in_seconds=1.0)
                delay = 1.0
            except Exception:
                # A bug met by one pass must not end the agent (and every job's supervision).
                log.exception("schedules_pass_crashed", retry_in_seconds=1.0)
                delay = 1.0
            with anyio.move_on_after(delay):
                await wake.wait()

    async def plan(self) -> int:
        """Give enabled schedules without a due time their first one (rows written through
        SQL, resumed or changed); disable, with the reason, those croniter cannot read."""
        rows = await schedule_runs.unplanned(self._pool, PLAN_BATCH)
        now = self._clock.now()
        for row in rows:
            try:
                first = cron.next_after(row["cron"], row["timezone"], now)
            except cron.CronError as exc:
                await self._disable(self._pool, row, str(exc))
                continue
            await schedule_runs.plan(self._pool, row, first)
            log.info(
                "schedule_planned", tenant=row["tenant"], schedule=row["name"], next_run_at=first
            )
        return len(rows)

    async def fire_due(self) -> int:
        """Fire the schedules due now (one transaction); return how many were handled."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await schedule_runs.due(conn, now, FIRE_BATCH)
            for row in rows:
                await self._fire(conn, row, now)
        return len(rows)

    async def _fire(self, conn: Any, row: asyncpg.Record, now: datetime) -> None:
        tenant, name, due = row["tenant"], row["name"], row["next_run_at"]
        fields = {"tenant": tenant, "schedule": name, "due": due.isoformat()}
        try:
            following = cron.next_after(row["cron"], row["timezone"], now)
        except cron.CronError as exc:
            await self._disable(conn, row, str(exc))
            return
        if row["overlap"] == "skip":
            unfinished = await schedule_runs.unfinished_job(conn, tenant, name)
            if unfinished is not None:
                await schedule_runs.skipped(conn, tenant, name, due, following)
                log.info("schedule_skipped", unfinished_job_id=unfinished, **fields)
                return
        try:
            async with conn.transaction():  # a savepoint: a refused insert leaves the rest
                job_id = await schedule_runs.insert_job(conn, tenant, name, row["job"], due)
        except asyncpg.UniqueViolationError:
            # The job of this due time exists: never fire it twice, only move on.
            log.warning("schedule_due_already_fired", **fields)
            job_id = None
        except _REFUSED as exc:
            await self._disable(conn, row, f"the job template is refused: {exc}")
            return
        await schedule_runs.fired(conn, tenant, name, due, following=following, job_id=job_id)
        late = (now - due).total_seconds()
        log.info("schedule_fired", job_id=job_id, late_seconds=round(late, 3), **fields)

    async def _disable(self, conn: Any, row: asyncpg.Record, reason: str) -> None:
        await schedule_runs.disable(conn, row, reason)
        # Not an exception of ours: the row is wrong, and the reason is in it for its owner.
        log.warning("schedule_disabled", tenant=row["tenant"], schedule=row["name"], error=reason)

    async def _next_wait(self) -> float:
        due = await schedule_runs.next_due(self._pool)
        if due is None:
            return self._max_sleep
        wait = self._clock.real_seconds((due - self._clock.now()).total_seconds())
        return min(self._max_sleep, max(MIN_SLEEP, wait))
