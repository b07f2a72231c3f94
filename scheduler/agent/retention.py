"""Retention: the agent removes old job output and old finished job rows, and keeps the
usage table's months made ahead of their rows.

Every ``retention_interval_seconds``, one sweep: (1) this month's usage partition and the next
two are made if missing (migration 0015); (2) output directories of attempts not running here
whose files were last written more than ``output_retention`` ago are removed, at most
OUTPUT_BATCH per sweep, in a worker thread; (3) finished job rows older than
``job_retention`` are deleted in batches of JOB_BATCH rows, each batch its own transaction
holding the retention lock row (SKIP LOCKED: with several agents, one sweeps, the others skip).
A job that has billing rows is kept: usage is append-only and references it (see
db/queries.sql delete_old_jobs). One log line per sweep says what went.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import structlog

from scheduler.agent.attempts import Attempts
from scheduler.db.outage import DB_ERRORS, log_failure
from scheduler.repos import retention as retention_repo
from scheduler.rundirs import parse_run_dir_name

log = structlog.get_logger(__name__)

# Most attempt directories removed per sweep, and job rows per batch and per sweep: a backlog
# (retention just turned on) goes over several sweeps instead of one long stall.
OUTPUT_BATCH = 10_000
JOB_BATCH = 1_000
JOB_BATCHES = 100


@dataclass(frozen=True)
class Swept:
    """What one sweep did."""

    output_dirs: int = 0
    output_bytes: int = 0
    jobs: int = 0
    partitions: int = 0


def last_written(directory: Path, now: float) -> tuple[float, int, bool]:
    """The newest mtime in an attempt's directory (itself included), its size in bytes, and
    whether it is safe to remove: nothing in it is on another filesystem (a mount left by a
    crash is never walked into). An mtime after ``now`` is ignored: an image job's writable
    layer is the job's to touch, and a date in the future must not keep it forever."""
    top = os.lstat(directory)
    newest = top.st_mtime if top.st_mtime <= now else 0.0
    size = 0
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            try:
                st = os.lstat(Path(root) / name)
            except FileNotFoundError:
                continue
            if st.st_dev != top.st_dev:
                return newest, size, False
            if st.st_mtime <= now:
                newest = max(newest, st.st_mtime)
            size += st.st_size if name in files else 0
    return newest, size, True


def remove_old_output(
    runs_dir: Path, older_than: float, running: frozenset[tuple[int, int]], limit: int
) -> tuple[int, int]:
    """Remove attempt directories under ``runs_dir`` last written before ``older_than``
    (epoch seconds) that are not in ``running`` (job id, attempt); return how many and their
    bytes. Blocking: called in a worker thread."""
    removed = removed_bytes = 0
    now = time.time()
    try:
        entries = list(os.scandir(runs_dir))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if removed >= limit:
            break
        attempt = parse_run_dir_name(entry.name)  # "<job id>-<attempt>" (rundirs.py)
        if attempt is None or not entry.is_dir(follow_symlinks=False):
            continue
        if attempt in running:
            continue
        path = Path(entry.path)
        try:
            newest, size, safe = last_written(path, now)
        except FileNotFoundError:
            continue
        if newest >= older_than:
            continue
        if not safe:
            log.warning("retention_output_skipped", path=str(path), reason="holds a mount")
            continue
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("retention_output_failed", path=str(path), error=str(exc))
            continue
        removed += 1
        removed_bytes += size
    return removed, removed_bytes


class Retention:
    """The sweep loop (a task of the agent's task group)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        runs_dir: Path,
        attempts: Attempts,
        output_retention: float | None,
        job_retention: float | None,
        interval: float,
    ) -> None:
        self._pool = pool
        self._runs_dir = runs_dir
        self._attempts = attempts
        self._output_retention = output_retention
        self._job_retention = job_retention
        self._interval = interval

    async def run(self) -> None:
        while True:
            await self.sweep()
            await anyio.sleep(self._interval)

    async def sweep(self) -> Swept:
        """One sweep; database errors are logged and the rest of the sweep still runs."""
        started = time.monotonic()
        partitions = await self._partitions()
        dirs, size = await self._output()
        jobs = await self._jobs()
        swept = Swept(dirs, size, jobs, partitions)
        log.info(
            "retention_swept",
            output_dirs_removed=dirs,
            output_bytes_removed=size,
            jobs_deleted=jobs,
            usage_partitions=partitions,
            seconds=round(time.monotonic() - started, 3),
        )
        return swept

    async def _partitions(self) -> int:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await retention_repo.make_partitions_ahead(conn)
                return await retention_repo.usage_partition_count(conn)
        except DB_ERRORS as exc:
            # Also a month whose rows sit in the default partition: that partition is made
            # by hand (docs/operations.md); the others were made before it.
            log_failure(log, "usage_partitions_failed", exc)
        return 0

    async def _output(self) -> tuple[int, int]:
        if self._output_retention is None:
            return 0, 0
        running = frozenset((a.job.id, a.job.attempts) for a in self._attempts.all())
        cutoff = time.time() - self._output_retention
        with contextlib.suppress(OSError):
            return await anyio.to_thread.run_sync(
                remove_old_output, self._runs_dir, cutoff, running, OUTPUT_BATCH
            )
        return 0, 0

    async def _jobs(self) -> int:
        if self._job_retention is None:
            return 0
        deleted = 0
        try:
            for _ in range(JOB_BATCHES):
                async with self._pool.acquire() as conn, conn.transaction():
                    if not await retention_repo.try_lock(conn):
                        break  # another agent is sweeping
                    rows = await retention_repo.delete_old_jobs(
                        conn, self._job_retention, JOB_BATCH
                    )
                deleted += len(rows)
                if len(rows) < JOB_BATCH:
                    break
        except DB_ERRORS as exc:
            log_failure(log, "retention_jobs_failed", exc)
        return deleted
