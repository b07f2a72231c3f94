"""The job columns the claim reads beside scheduler.claim_jobs (output limit, kill grace) are
those of the claimed row, also for a job committed while the claim waited for its lock (the
claiming statement's own snapshot is older than the claim function's)."""

from __future__ import annotations

from decimal import Decimal

import anyio
import asyncpg
import pytest

from scheduler.agent.claim import claim
from scheduler.db.pool import create_pool
from scheduler.jobs import Job
from scheduler.policy.admission import Capacity
from tests.conftest import slow

pytestmark = pytest.mark.anyio


async def test_a_job_committed_while_the_claim_waits_keeps_its_columns(
    dsn: str, db: asyncpg.Connection
) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=2, agent_writer=True)
    holder = await asyncpg.connect(dsn)
    try:
        claimed: list[asyncpg.Record] = []
        async with anyio.create_task_group() as tg:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM scheduler.claim_lock FOR UPDATE")

            async def claiming() -> None:
                claimed.extend(await claim(pool, "n1", 4, Capacity(4.0, 1 << 34), unfit=False))

            tg.start_soon(claiming)
            # The claim's statement has begun (its snapshot taken) and waits for the lock.
            with anyio.fail_after(slow(10)):
                while not await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%claim_jobs%'"
                ):
                    await anyio.sleep(0.02)
            job_id = await db.fetchval(
                # run_at before the claim's transaction began: runnable for it.
                "INSERT INTO scheduler.jobs (argv, kill_grace_seconds, output_limit_bytes, run_at)"
                " VALUES ('{true}', 3, 4096, now() - interval '1 minute') RETURNING id"
            )
            await tx.commit()
        [row] = claimed
        job = Job.from_row(row)
        assert (job.id, job.kill_grace_seconds, job.output_limit_bytes) == (
            job_id,
            Decimal(3),
            4096,
        )
    finally:
        await holder.close()
        await pool.close()
