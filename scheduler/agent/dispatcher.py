"""Claims queued jobs for this node as soon as they are committed.

One dedicated connection LISTENs on ``scheduler_jobs``; a NOTIFY (sent once per inserting
statement, after commit) wakes the claim loop within milliseconds. NOTIFY is not durable, so
the loop also claims every ``poll_interval`` seconds: a job inserted while the LISTEN
connection was down is started by the next poll.

While ``blocked`` gives a reason (the state directory is full: a job could not be started
safely), nothing is claimed; the jobs stay queued for this node or any other. ``refresh``
(the state disk's check) runs after every claim that got jobs and before they start, so a
disk that filled since the last periodic check starts none of them (they go back).

A claim that fails may still have committed (the connection broke after the commit, before
its answer arrived): Postgres then says jobs run here that nothing here started. After such a
failure, before claiming again, the dispatcher starts every attempt Postgres gives this node
under its epoch that it neither runs nor is recording.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import asyncpg
import structlog
from anyio.abc import TaskGroup

from scheduler.agent.claim import claim
from scheduler.db.outage import DB_ERRORS, log_failure
from scheduler.jobs import Job
from scheduler.policy.admission import Capacity, detect_capacity
from scheduler.repos import claims
from scheduler.repos import listen as channels

log = structlog.get_logger(__name__)
CLAIM_BATCH = 64


class Dispatcher:
    """Keeps up to ``max_running`` attempts running on this node."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        node: str,
        max_running: int,
        poll_interval: float,
        run_job: Callable[[Job], Awaitable[None]],
        capacity: Capacity | None = None,
        epoch: int | None = None,
        on_wake: Callable[[], None] | None = None,
        blocked: Callable[[], str | None] | None = None,
        refresh: Callable[[], Awaitable[object]] | None = None,
        unrecorded: set[int] | None = None,
    ) -> None:
        # The requests of running and frozen jobs never add up to more than this.
        self.capacity = capacity if capacity is not None else detect_capacity()
        self._pool = pool
        self._node = node
        self._epoch = epoch
        self._max_running = max_running
        self._poll_interval = poll_interval
        self._run_job = run_job
        self._running: set[int] = set()
        # Jobs whose end was handed to the recorder and is not committed yet (the outbox's).
        self._unrecorded = unrecorded if unrecorded is not None else set()
        # Attempts whose task crashed: left 'running' in Postgres for the next start-up.
        self._crashed: set[int] = set()
        self._claim_unknown = False
        self._unfit_checked = -float("inf")
        self._wake = anyio.Event()
        # Told whenever work may be coming (runtime.warmer: get the cgroup lock ready).
        self._on_wake = on_wake
        self.blocked = blocked
        # A fresh look at what ``blocked`` answers from (the state disk), awaited after each
        # claim that got jobs, before they start: once per batch, not per launch.
        self.refresh = refresh
        self._paused: str | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def wake(self, *_: object) -> None:
        """Ask for a claim now (NOTIFY callback, or a slot of max_running freed)."""
        self._wake.set()
        if self._on_wake is not None:
            self._on_wake()

    def adopt(self, job_id: int) -> None:
        """Count an attempt recovered at start-up against this node's capacity."""
        self._running.add(job_id)

    def release(self, job_id: int) -> None:
        """An adopted attempt ended."""
        self._slot_freed(job_id)

    def _slot_freed(self, job_id: int) -> None:
        # The end of an attempt frees capacity in Postgres only once its record commits, and
        # that commit wakes every dispatcher (scheduler_done): a claim now would find what the
        # last one found. Only a slot of this node's own limit (max_running) is freed here.
        full = len(self._running) >= self._max_running
        self._running.discard(job_id)
        if full:
            self.wake()

    async def listen(self, conn: asyncpg.Connection) -> None:
        """Subscribe ``conn`` to the insert notifications."""
        await channels.listen(conn, channels.JOBS, self.wake)
        # A recorded end (on any node) frees capacity: admission counts the jobs Postgres
        # says are running, so the claim waits for the recorder's commit, not the exit.
        await channels.listen(conn, channels.DONE, self.wake)

    async def run(self, task_group: TaskGroup) -> None:
        """The claim loop; attempts run as tasks of ``task_group``."""
        while True:
            # A fresh event before the claim: a NOTIFY that arrives during the claim sets
            # it, so the wait below returns at once instead of losing the wake-up.
            wake = self._wake = anyio.Event()
            free = self._max_running - len(self._running)
            claimed = 0
            if self._is_paused():
                free = 0
            if free > 0 and self._claim_unknown:
                self._claim_unknown = not await self._start_unheard(task_group)
            if free > 0 and not self._claim_unknown:
                want = min(free, CLAIM_BATCH)
                # Jobs that can never run here are failed at most once per poll interval:
                # a claim woken by every NOTIFY need not look for them again.
                check_unfit = time.monotonic() - self._unfit_checked >= self._poll_interval
                try:
                    rows = await claim(
                        self._pool,
                        self._node,
                        want,
                        self.capacity,
                        self._epoch,
                        unfit=check_unfit,
                    )
                    if check_unfit:
                        self._unfit_checked = time.monotonic()
                except DB_ERRORS as exc:
                    # The database is away: running jobs stay supervised; claim again later.
                    log_failure(log, "claim_failed", exc, retry_in_seconds=self._poll_interval)
                    self._claim_unknown = True
                    rows = []
                    want = -1
                claimed = len(rows)
                log.debug("claimed", jobs=claimed, want=want)
                if rows and self._on_wake is not None:
                    self._on_wake()  # claimed by the safety poll: no NOTIFY said so
                if rows and self.refresh is not None:
                    # A look at the state disk taken after the claim: a disk that filled
                    # since the periodic check (up to its interval ago) starts none of
                    # them (the runner sends them back to the queue, see Runner.blocked).
                    await self.refresh()
                for row in rows:
                    job = Job.from_row(row)
                    self._running.add(job.id)
                    task_group.start_soon(self._attempt, job, name=f"job-{job.id}")
                if claimed == want:
                    continue  # the queue may hold more: claim again before sleeping
            with anyio.move_on_after(await self._next_wait()):
                await wake.wait()

    def _is_paused(self) -> bool:
        reason = self.blocked() if self.blocked is not None else None
        if (reason is None) != (self._paused is None):
            if reason is not None:
                log.error("claims_paused", reason=reason)
            else:
                log.info("claims_resumed")
        self._paused = reason
        return reason is not None

    async def _start_unheard(self, task_group: TaskGroup) -> bool:
        """Start the attempts a failed claim may have committed; False if Postgres is away."""
        # Taken before the query: a job leaves these sets only once its end is committed, so
        # any attempt the query returns that is in none of them was never started here.
        known = self._running | self._unrecorded | self._crashed
        try:
            rows = await claims.claimed_on_node(self._pool, self._node, self._epoch)
        except DB_ERRORS:
            return False
        for row in rows:
            if row["id"] in known:
                continue
            job = Job.from_row(row)
            log.warning("unheard_claim_started", job_id=job.id, attempt=job.attempts)
            self._running.add(job.id)
            task_group.start_soon(self._attempt, job, name=f"job-{job.id}")
        return True

    async def _next_wait(self) -> float:
        """Sleep until the poll, or until the next delayed or backed-off job is due."""
        try:
            due = await claims.next_run_at(self._pool)
        except DB_ERRORS:
            return self._poll_interval
        if due is None:
            return self._poll_interval
        return max(0.001, min(self._poll_interval, float(due)))

    async def _attempt(self, job: Job) -> None:
        try:
            await self._run_job(job)
        except Exception:
            # A bug in one attempt must not take the agent (and every other job) down; the
            # attempt stays 'running' in Postgres and is recorded by the next start-up.
            log.exception("attempt_crashed", job_id=job.id, tenant=job.tenant)
            self._crashed.add(job.id)
        finally:
            self._slot_freed(job.id)
