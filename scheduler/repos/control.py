"""The controller's side of the jobs and sessions: desired states, the states and errors it
writes back, and the tenant sessions that block the agent's own writes."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from scheduler.db.pool import Db
from scheduler.db.queries import q


async def control_jobs(db: Db, job_ids: list[int], node: str) -> list[asyncpg.Record]:
    """Desired state, state, attempt and kill grace of the jobs ``job_ids`` running on
    ``node``."""
    return await db.fetch(q("control_jobs"), job_ids, node)


async def set_job_error(db: Db, job_id: int, error: str, attempt: int) -> None:
    """Say ``error`` in the job's row while ``attempt`` runs (its end overwrites it)."""
    await db.execute(q("set_job_error"), job_id, error, attempt)


async def set_job_states(db: Db, changes: Iterable[tuple[int, str, int]]) -> None:
    """Write (job id, state, attempt) for each attempt whose state changed (one batch)."""
    await db.executemany(q("set_job_state"), changes)


async def end_tenant_blockers(
    db: Db, application_name: str, after_seconds: float
) -> list[asyncpg.Record]:
    """End the tenant sessions that blocked a session named ``application_name`` for more
    than ``after_seconds``; one row (pid, role, ended) per session found."""
    return await db.fetch(q("end_tenant_blockers"), application_name, after_seconds)
