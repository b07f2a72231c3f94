"""Claims: the one-statement claim of queued jobs, the unfit check under the claim lock, the
jobs this node holds, and the notifications that wake dispatchers."""

from __future__ import annotations

from typing import Any

import asyncpg

from scheduler.db.pool import Conn, Db
from scheduler.db.queries import q


async def lock(conn: Conn) -> None:
    """Take the claim lock (the one row of scheduler.claim_lock) to the end of the
    transaction ``conn`` is in."""
    await conn.execute(q("claim_lock"))


async def claim_jobs(
    db: Db,
    node: str,
    want: int,
    *,
    cpu: float,
    memory_bytes: int,
    allocation_seconds: float,
    epoch: int | None,
) -> list[asyncpg.Record]:
    """scheduler.claim_jobs: up to ``want`` jobs claimed for ``node`` at ``epoch`` (one
    statement; on a pool, its own transaction)."""
    return await db.fetch(q("claim_jobs"), node, want, cpu, memory_bytes, allocation_seconds, epoch)


async def unfit_jobs(conn: Conn, node: str, cpu: float, memory_bytes: int) -> list[asyncpg.Record]:
    """Queued jobs that can never run anywhere (``id``, ``reason``)."""
    return await conn.fetch(q("unfit_jobs"), node, cpu, memory_bytes)


async def fail_jobs(conn: Conn, ids: list[int], reasons: list[str]) -> list[asyncpg.Record]:
    """Fail the queued jobs ``ids`` with their ``reasons``; the rows failed."""
    return await conn.fetch(q("fail_jobs"), ids, reasons)


async def claimed_on_node(db: Db, node: str, epoch: int | None) -> list[asyncpg.Record]:
    """The jobs Postgres says run on ``node`` at ``epoch`` (full job rows)."""
    return await db.fetch(q("claimed_on_node"), node, epoch)


async def next_run_at(db: Db) -> Any:
    """Seconds until the next delayed or backed-off queued job is due (None: none is)."""
    return await db.fetchval(q("next_run_at"))


async def notify_done(db: Db) -> None:
    """Tell the dispatchers that capacity was freed (jobs ended or failed)."""
    await db.execute(q("notify_jobs_done"))


async def notify_queued(db: Db) -> None:
    """Tell the dispatchers that jobs were put back in the queue."""
    await db.execute(q("notify_jobs_queued"))
