"""Writes finished attempts to Postgres in batches, then removes their cgroups.

The order matters for exact billing: the final counters were read from the cgroup, the
totals and the closing usage row commit in one transaction, and only then is the cgroup
removed. An agent killed before the commit finds the cgroup (and its counters) still there.

Completions are not spooled: while the database is away or full they wait here, retried with
backoff, and their durable copy is already on disk and in the kernel (the monitor's exit
record in the run directory, the cgroup with its counters), which a restarted agent records
from (agent/recovery.py). Before each commit the usage spool is replayed, so an attempt's
closing row is always numbered after every period the sampler spooled for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from scheduler import failpoints
from scheduler.accounting.ledger import user_share
from scheduler.accounting.metrics import ServiceStats
from scheduler.accounting.periods import Period
from scheduler.agent.health import Health
from scheduler.agent.spool import UsageSpool
from scheduler.backoff import Backoff
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Usage
from scheduler.db.outage import DB_ERRORS, describe, log_failure, outage_kind
from scheduler.db.pool import Conn
from scheduler.jobs import Job, Outcome, byte_seconds, cpu_seconds, retry_delay_seconds
from scheduler.log import enabled
from scheduler.repos import attempts as attempts_repo
from scheduler.repos import claims
from scheduler.runtime.launcher import remove_run_dir
from scheduler.timeconv import ns_to_datetime

log = structlog.get_logger(__name__)
MAX_BATCH = 256
# Retry backoff of a batch that could not be committed: from 0.1 s, growing to this.
MAX_RETRY_DELAY = 5.0


@dataclass(frozen=True)
class Completion:
    """An attempt that ended, with everything needed to record it."""

    job: Job
    node: str
    cgroup: CgroupPath | None  # None when the attempt failed before its cgroup existed
    outcome: Outcome
    usage: Usage
    start_ns: int
    end_ns: int
    # The closing row computed against the sampler's rows; None: the whole attempt in one row.
    closing: Period | None = None
    # Set when the attempt never ran the job's command for a fault of this node's own (its
    # state disk is full): the job goes back to the queue with its attempt not counted, unless
    # the attempt already has usage rows (then it is recorded like any other start error).
    release: str | None = None
    # The monitor's directory (pid, exit record): removed once the end is committed.
    run_dir: Path | None = None


class Outbox:
    """Where ended attempts are sent to be recorded: the recorder's stream, and the jobs whose
    end was sent but is not committed yet (Postgres still says they run here)."""

    def __init__(self, stream: MemoryObjectSendStream[Completion]) -> None:
        self._stream = stream
        self.unrecorded: set[int] = set()

    async def send(self, completion: Completion) -> None:
        self.unrecorded.add(completion.job.id)
        try:
            # Room in the buffer (the usual case): no pass through the event loop per end.
            self._stream.send_nowait(completion)
        except anyio.WouldBlock:
            await self._stream.send(completion)


async def _release(conn: Conn, batch: list[Completion]) -> set[int]:
    """Put back in the queue the attempts of ``batch`` that have no usage row; their ids."""
    if not batch:
        return set()
    rows = await attempts_repo.release_claims(
        conn,
        [c.job.id for c in batch],
        [c.job.attempts for c in batch],
        [c.release for c in batch],
    )
    return {int(r["id"]) for r in rows}


def _columns(rows: Iterable[tuple[object, ...]]) -> list[list[object]]:
    """Rows of statement arguments as one list per argument (for unnest)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _row_args(c: Completion) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The arguments of ``c``'s finish_jobs row and of its closing usage row."""
    retry_at = None
    state: str = c.outcome.state
    if c.outcome.retry:
        state = "queued"
        retry_at = datetime.now(UTC) + timedelta(seconds=retry_delay_seconds(c.job.attempts))
    job, usage = c.job, c.usage
    # Computed once: the job's row and a whole-attempt usage row share them.
    started, ended = ns_to_datetime(c.start_ns), ns_to_datetime(c.end_ns)
    cpu = cpu_seconds(usage.cpu_ns)
    finish = (
        job.id,
        state,
        c.outcome.exit_code,
        c.outcome.signal,
        c.outcome.oom_killed,
        c.outcome.error,
        started,
        ended,
        cpu,
        usage.memory_peak_bytes,
        usage.io_read_bytes,
        usage.io_write_bytes,
        retry_at,
        job.attempts,
    )
    p = c.closing
    if p is not None:
        closing = (
            job.id,
            job.attempts,
            job.tenant,
            c.node,
            ns_to_datetime(p.start_ns),
            ns_to_datetime(p.end_ns),
            p.cpu_seconds,
            p.memory_byte_seconds,
            p.memory_peak_bytes,
            p.io_read_bytes,
            p.io_write_bytes,
        )
        return finish, closing
    # The whole attempt in one row. Timestamps are truncated to microseconds (Postgres'
    # resolution) before computing the integral, so that the row's numbers follow from the
    # row's own period.
    start, end = c.start_ns // 1000 * 1000, c.end_ns // 1000 * 1000
    closing = (
        job.id,
        job.attempts,
        job.tenant,
        c.node,
        started,
        ended,
        cpu,
        byte_seconds(usage.memory_peak_bytes, start, end),
        usage.memory_peak_bytes,
        usage.io_read_bytes,
        usage.io_write_bytes,
    )
    return finish, closing


def _record_args(batch: list[Completion]) -> list[list[object]]:
    """The arguments of the recording statement (repos/attempts.RECORD) for ``batch``:
    finish_jobs' columns, then the usage rows'."""
    finish, closing = zip(*map(_row_args, batch), strict=True)
    return [*_columns(finish), *_columns(closing)]


def _count(stats: ServiceStats, recorded: list[Completion]) -> None:
    """Count the closing rows just committed in the tenants' billed totals (/metrics)."""
    for c in recorded:
        u, p = c.usage, c.closing
        share = user_share(u.cpu_user_ns, u.cpu_system_ns)
        if p is not None:
            stats.billed.add(c.job.tenant, p.cpu_seconds, p.io_read_bytes, p.io_write_bytes, share)
        else:
            cpu = cpu_seconds(u.cpu_ns)
            stats.billed.add(c.job.tenant, cpu, u.io_read_bytes, u.io_write_bytes, share)


def _dispatch_latency(c: Completion) -> float | None:
    """Insert commit -> exec of a first attempt that reached its process, in seconds."""
    if c.job.attempts != 1 or c.cgroup is None or c.outcome.state == "lost":
        return None
    return max(0.0, (ns_to_datetime(c.start_ns) - c.job.submitted_at).total_seconds())


class Recorder:
    """Drains completions from a stream and commits them in batches."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        driver: CgroupDriver,
        stats: ServiceStats | None = None,
        *,
        spool: UsageSpool | None = None,
        health: Health | None = None,
        unrecorded: set[int] | None = None,
    ) -> None:
        self._pool = pool
        self._driver = driver
        self._stats = stats
        self._spool = spool
        self._health = health or Health()
        # The outbox's set: a job leaves it once its end is committed.
        self._unrecorded = unrecorded if unrecorded is not None else set()

    async def run(self, completions: MemoryObjectReceiveStream[Completion]) -> None:
        async with completions:
            async for first in completions:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(completions.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._commit_until_done(batch)

    async def _commit_until_done(self, batch: list[Completion]) -> None:
        # A finished attempt must be recorded exactly once: on a database error keep the
        # batch and try again (the final row's unique index makes a repeat harmless).
        backoff = Backoff(0.1, MAX_RETRY_DELAY)
        while True:
            try:
                if self._spool is not None:
                    await self._spool.replay(self._pool)
                await self.commit(batch)
            except DB_ERRORS as exc:
                if outage_kind(exc) is not None:
                    self._health.fail(
                        "completions", f"finished jobs wait to be recorded: {describe(exc)}"
                    )
                delay = backoff.next()
                log_failure(
                    log, "record_batch_failed", exc, jobs=len(batch), retry_in_seconds=delay
                )
                if self._stats is not None:
                    self._stats.database_errors += 1
                await anyio.sleep(delay)
            else:
                self._health.ok("completions")
                return

    def _clean_up(self, batch: list[Completion]) -> None:
        """Remove what the recorded attempts leave: their cgroups, their monitors' records."""
        for c in batch:
            try:
                if c.cgroup is not None:
                    self._driver.remove(c.cgroup)
            except Exception:  # an orphan cgroup is logged, never fatal for the batch
                log.exception("cgroup_remove_failed", job_id=c.job.id, cgroup=str(c.cgroup))
            if c.run_dir is not None:
                try:
                    remove_run_dir(c.run_dir)
                except OSError:
                    log.exception("run_dir_remove_failed", job_id=c.job.id, run_dir=str(c.run_dir))

    async def commit(self, batch: list[Completion]) -> None:
        """Record a batch in one transaction, then remove the cgroups it covered."""
        failpoints.hit("before_record")
        releasing = [c for c in batch if c.release is not None]
        if not releasing:
            # The common case: one statement, its own transaction (one round trip).
            await attempts_repo.record(self._pool, _record_args(batch))
            released: set[int] = set()
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                released = await _release(conn, releasing)
                if released:
                    await claims.notify_queued(conn)
                finished = [c for c in batch if c.job.id not in released]
                if finished:
                    await attempts_repo.record(conn, _record_args(finished))
                else:
                    await claims.notify_done(conn)
        for c in batch:
            self._unrecorded.discard(c.job.id)
        if self._stats is not None:
            _count(self._stats, [c for c in batch if c.job.id not in released])
        failpoints.hit("after_record")
        # rmdir in every hierarchy can take a while (the kernel offlines each cgroup): off the
        # event loop, one thread hop per batch.
        await async_driver(self._driver).run(self._clean_up, batch)
        # Skipped, arguments and all, where info is filtered out (one line per job).
        info = enabled(logging.INFO)
        for c in batch:
            if c.job.id in released:
                log.warning(
                    "job_released",
                    job_id=c.job.id,
                    tenant=c.job.tenant,
                    attempt=c.job.attempts,
                    reason=c.release,
                )
                continue
            if self._stats is not None:
                self._stats.attempt_finished(
                    c.job.tenant,
                    "queued" if c.outcome.retry else c.outcome.state,
                    _dispatch_latency(c),
                )
            if not info:
                continue
            log.info(
                "job_finished",
                job_id=c.job.id,
                tenant=c.job.tenant,
                attempt=c.job.attempts,
                state="queued" if c.outcome.retry else c.outcome.state,
                exit_code=c.outcome.exit_code,
                signal=c.outcome.signal,
                oom_killed=c.outcome.oom_killed,
                cpu_seconds=str(cpu_seconds(c.usage.cpu_ns)),
                duration_ms=round((c.end_ns - c.start_ns) / 1e6, 3),
            )
