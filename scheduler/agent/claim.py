"""One claim: optionally fail the jobs that can never run, then claim the next ones.

The claim is one statement (``scheduler.claim_jobs``, migrations/0008_claim_function.sql,
replaced in 0010_control_plane.sql) that locks the one row of ``scheduler.claim_lock`` (held
to the end of the transaction, shared by every node; only the owner may lock it, unlike an
advisory key, which any tenant role could hold), so a tenant's limits,
summed over all nodes, are checked against every committed claim. Sent on its own it is its
own transaction: one round trip. The unfit check runs first in the same transaction, under
the same lock.
"""

from __future__ import annotations

import asyncpg
import structlog

from scheduler import failpoints
from scheduler.db.pool import Conn, Db
from scheduler.policy.admission import Capacity
from scheduler.policy.fairshare import ALLOCATION_SECONDS
from scheduler.repos import claims

log = structlog.get_logger(__name__)


async def claim(
    pool: asyncpg.Pool,
    node: str,
    want: int,
    capacity: Capacity,
    epoch: int | None = None,
    *,
    unfit: bool = True,
) -> list[asyncpg.Record]:
    """Claim up to ``want`` jobs for ``node`` (fair share, priority, age; within capacity),
    recording the node's lease ``epoch`` on each; with ``unfit``, first fail the queued jobs
    that can never run (the dispatcher does that once per poll interval, not per NOTIFY)."""
    if unfit:
        async with pool.acquire() as conn, conn.transaction():
            await claims.lock(conn)
            failpoints.hit("in_claim_lock")
            await _fail_unfit(conn, node, capacity)
            rows = await _claim_jobs(conn, node, want, capacity, epoch)
    else:
        # The common path (every NOTIFY): one statement, no BEGIN or COMMIT of our own.
        rows = await _claim_jobs(pool, node, want, capacity, epoch)
    if rows:
        failpoints.hit("after_claim")  # committed; nothing started yet
    return rows


async def _claim_jobs(
    db: Db, node: str, want: int, capacity: Capacity, epoch: int | None
) -> list[asyncpg.Record]:
    return await claims.claim_jobs(
        db,
        node,
        want,
        cpu=capacity.cpu,
        memory_bytes=capacity.memory_bytes,
        allocation_seconds=ALLOCATION_SECONDS,
        epoch=epoch,
    )


async def _fail_unfit(conn: Conn, node: str, capacity: Capacity) -> None:
    found = await claims.unfit_jobs(conn, node, capacity.cpu, capacity.memory_bytes)
    if not found:
        return
    ids, reasons = [r["id"] for r in found], [r["reason"] for r in found]
    failed = await claims.fail_jobs(conn, ids, reasons)
    for row in failed:
        log.warning("job_unfit", job_id=row["id"], tenant=row["tenant"], error=row["error"])
    if failed:
        await claims.notify_done(conn)
