"""Attempts whose processes outlive SIGKILL (stuck in the kernel, e.g. in throttled writeback).

Such an attempt stays ``running``: its processes still hold their cpu and memory, so its
capacity stays reserved, and its end can only be recorded (and billed) once its cgroup is
empty. Meanwhile the runner retries the kill with backoff and this registry makes it
visible: the ``scheduler_unkillable_jobs`` gauge, a ``/readyz`` reason, the job's ``error``
text, and one log line when it starts and one when it ends. The sampler writes no
zero-valued usage rows for these attempts (a stuck process uses nothing most of the time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog

from scheduler.accounting.metrics import ServiceStats
from scheduler.agent.health import Health
from scheduler.db.outage import DB_ERRORS, log_failure
from scheduler.jobs import Job
from scheduler.repos import control

log = structlog.get_logger(__name__)

# The kill is retried after this, doubling up to KILL_RETRY_MAX_SECONDS.
KILL_RETRY_FIRST_SECONDS = 1.0
KILL_RETRY_MAX_SECONDS = 30.0


@dataclass
class Stuck:
    """One attempt whose processes survive the kill."""

    job: Job
    since: float  # monotonic
    pids: int
    tries: int = 1
    error_written: bool = False


class Unkillable:
    """The attempts of this agent whose processes survived a SIGKILL; mutated on the loop."""

    def __init__(
        self,
        pool: asyncpg.Pool | None = None,
        *,
        stats: ServiceStats | None = None,
        health: Health | None = None,
        quiet: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        # The sampler's: no zero-valued usage rows for a stuck attempt.
        self._quiet = quiet
        self._stats = stats
        self._health = health
        self._stuck: dict[int, Stuck] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._stuck

    def __len__(self) -> int:
        return len(self._stuck)

    async def survived(self, job: Job, pids: list[int], error: str) -> None:
        """A kill of ``job``'s attempt left ``pids`` behind (called after each failed try)."""
        stuck = self._stuck.get(job.id)
        if stuck is None:
            stuck = self._stuck[job.id] = Stuck(job, time.monotonic(), len(pids))
            log.error(
                "job_unkillable",
                job_id=job.id,
                tenant=job.tenant,
                attempt=job.attempts,
                processes=len(pids),
                pids=pids[:10],
                error=error,
            )
            self._publish()
            if self._quiet is not None:
                self._quiet(job.id)
        else:
            stuck.tries += 1
            stuck.pids = len(pids)
        if not stuck.error_written:
            stuck.error_written = await self._write_error(stuck)

    def ended(self, job: Job) -> None:
        """``job``'s cgroup is empty at last (no-op if it never was stuck)."""
        stuck = self._stuck.pop(job.id, None)
        if stuck is None:
            return
        log.info(
            "job_unkillable_ended",
            job_id=job.id,
            tenant=job.tenant,
            attempt=job.attempts,
            kills=stuck.tries + 1,
            stuck_seconds=round(time.monotonic() - stuck.since, 3),
        )
        self._publish()

    def _publish(self) -> None:
        if self._stats is not None:
            self._stats.unkillable_jobs = len(self._stuck)
        if self._health is None:
            return
        if not self._stuck:
            self._health.ok("unkillable")
            return
        ids = ", ".join(str(i) for i in sorted(self._stuck))
        self._health.fail(
            "unkillable",
            f"processes of job(s) {ids} survive SIGKILL; the kill is retried until they are gone",
        )

    async def _write_error(self, stuck: Stuck) -> bool:
        """Say so in the job's ``error`` (its end overwrites it); False to try again later."""
        if self._pool is None:
            return True
        text = (
            f"{stuck.pids} processes survive SIGKILL (stuck in the kernel); the kill is "
            "retried and the attempt ends once they are gone"
        )
        try:
            await control.set_job_error(self._pool, stuck.job.id, text, stuck.job.attempts)
        except DB_ERRORS as exc:
            log_failure(log, "job_error_write_failed", exc, job_id=stuck.job.id)
            return False
        return True
