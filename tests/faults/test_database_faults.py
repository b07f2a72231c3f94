"""The database goes away under a running agent: Postgres restarted, or every session of the
agent terminated, with jobs running, ending and being sampled. The agent rides it out: every
job ends once, and its billing rows neither miss nor repeat a period."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.pool import connect
from tests.conftest import slow
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Workload, assert_counts, tally

pytestmark = pytest.mark.anyio
# 1, 2 or 3 s: some jobs end while the database is away, some after it is back.
STAGGERED = "sleep $(( SCHEDULER_JOB_ID % 3 + 1 ))"


async def wait_sampled(db: asyncpg.Connection, workload: Workload, ids: list[int]) -> None:
    """Until every job has run and has periodic billing rows (the sampler is at work)."""
    with anyio.fail_after(slow(30)):
        while not set(ids) <= set(workload.executions()) or await db.fetchval(
            "SELECT count(DISTINCT job_id) FROM scheduler.usage WHERE job_id = ANY($1)", ids
        ) < len(ids):
            await anyio.sleep(0.05)


async def test_postgres_restarted_with_jobs_running(
    private_postgres: EmbeddedPostgres,
    state_dir: Path,
    cgroup_root: str,
    workload: Workload,
    agents: Agents,
) -> None:
    server = private_postgres
    await agents.start(dsn=server.dsn)
    db = await connect(server.dsn)
    try:
        ids = await workload.submit(db, STAGGERED, 12)
        await wait_sampled(db, workload, ids)
        # Short jobs just before the stop: claims, starts and records are in flight.
        await workload.submit(db, "sleep 0.1", 20)
        await anyio.sleep(0.1)
        hit = await workload.hit(db)
    finally:
        await db.close()
    await server.stop()
    await anyio.sleep(1.0)  # sweeps and records fail meanwhile; the one-second jobs end
    await server.start()
    db = await connect(server.dsn)
    try:
        result = await tally(db, workload, fault="e: Postgres restart", hit=hit)
    finally:
        await db.close()
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])


async def test_every_agent_session_terminated_with_jobs_running(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    workload: Workload,
    agents: Agents,
) -> None:
    await agents.start()
    ids = await workload.submit(db, STAGGERED, 12)
    await wait_sampled(db, workload, ids)
    # Short jobs just before: claims, starts and records are in flight.
    await workload.submit(db, "sleep 0.1", 20)
    await anyio.sleep(0.05)
    hit = await workload.hit(db)
    for _ in range(4):  # again, once the agent is back, while sweeps and records go on
        with anyio.fail_after(slow(10)):
            while not (
                await db.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
    result = await tally(db, workload, fault="f: pg_terminate_backend of all sessions", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])


async def test_the_answer_to_a_committed_claim_is_lost(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    workload: Workload,
    agents: Agents,
) -> None:
    # The connection breaks after the claim committed: Postgres says the jobs run on this node,
    # the agent never heard of them. They must still run, once (not wait for a restart).
    await agents.start(failpoints="after_claim=error")
    ids = await workload.submit(db, "sleep 0.5", 12)
    log = agents.log("fault-node")
    with anyio.fail_after(slow(20)):
        while '"failpoint_hit"' not in log.read_text():
            await anyio.sleep(0.02)
    hit = await workload.hit(db)
    assert sorted(hit) == ids
    result = await tally(
        db, workload, fault="f2: claim committed, answer lost", hit=hit, timeout=20
    )
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])
