"""Peer (c): a Postgres job queue without isolation (pgqueuer), running `true` per job.

Why pgqueuer rather than procrastinate: it is built on asyncpg and anyio like this project,
wakes its worker with LISTEN/NOTIFY, and claims with `FOR UPDATE SKIP LOCKED`, so the
difference measured is what isolation and accounting cost, not a different driver or a
polling interval.

The worker (`python bench/queue_peer.py DSN`, a child process, as the agent is) has one
entrypoint, `true`: it spawns `true` with asyncio's subprocess, takes the time right after
the spawn returned (the child has exec'd by then: Python's spawn waits for the exec through
a close-on-exec pipe), waits for it and records (job id, enqueue time, start time, exit
code) in `peer_runs` in its own transaction. The enqueue time is the job row's `created`
(`now()` of the enqueuing transaction), as (a) uses `submitted_at`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import anyio
import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

ENTRYPOINT = "true"
RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS peer_runs (
    job_id bigint PRIMARY KEY,
    created timestamptz NOT NULL,
    started timestamptz NOT NULL,
    exit_code int NOT NULL
)
"""


async def install(dsn: str) -> None:
    """pgqueuer's schema plus the table the worker records runs in."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await conn.execute(RUNS_TABLE)
    finally:
        await conn.close()


def start_worker(dsn: str) -> subprocess.Popen[bytes]:
    """The worker in a child process; it is ready once it has run a job (see `warm_up`)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), dsn])


async def enqueue(conn: asyncpg.Connection, n: int) -> list[int]:
    """n `true` jobs in one statement (pgqueuer's batch enqueue); their ids."""
    ids = await Queries(AsyncpgDriver(conn)).enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
    return [int(i) for i in ids]


async def wait_recorded(conn: asyncpg.Connection, ids: list[int], timeout: float) -> None:
    """Until every job has its run recorded and pgqueuer has retired its queue row."""
    with anyio.fail_after(timeout):
        while True:
            runs = await conn.fetchval("SELECT count(*) FROM peer_runs WHERE job_id = ANY($1)", ids)
            queued = await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE id = ANY($1)", ids)
            if runs == len(ids) and queued == 0:
                return
            await anyio.sleep(0.005)


async def warm_up(conn: asyncpg.Connection, n: int = 20) -> None:
    await wait_recorded(conn, await enqueue(conn, n), timeout=60)


async def latency(conn: asyncpg.Connection, n: int) -> list[float]:
    """Enqueue -> `true` started, ms, one job at a time on an idle system (as spine.latency)."""
    samples = []
    for _ in range(n):
        (job_id,) = await enqueue(conn, 1)
        await wait_recorded(conn, [job_id], timeout=30)
        row = await conn.fetchrow(
            "SELECT created, started, exit_code FROM peer_runs WHERE job_id = $1", job_id
        )
        assert row is not None and row["exit_code"] == 0, row
        samples.append((row["started"] - row["created"]).total_seconds() * 1000)
        await anyio.sleep(0.01)
    return samples


async def throughput(conn: asyncpg.Connection, n: int) -> float:
    """n jobs enqueued in one batch to all recorded, jobs/s."""
    t0 = time.perf_counter()
    ids = await enqueue(conn, n)
    await wait_recorded(conn, ids, timeout=600)
    elapsed = time.perf_counter() - t0
    failed = await conn.fetchval(
        "SELECT count(*) FROM peer_runs WHERE job_id = ANY($1) AND exit_code <> 0", ids
    )
    assert failed == 0, f"{failed} of {n} `true` runs failed"
    return n / elapsed


async def serve(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    async def run_true(job: Job) -> None:
        proc = await asyncio.create_subprocess_exec("true")
        started = time.time()
        code = await proc.wait()
        await pool.execute(
            "INSERT INTO peer_runs (job_id, created, started, exit_code)"
            " VALUES ($1, $2, to_timestamp($3), $4)",
            int(job.id),
            job.created,
            started,
            code,
        )

    # Registered by a call, not as a decorator: mypy must pass without the `bench` extra.
    qm.entrypoint(ENTRYPOINT)(run_true)
    try:
        await qm.run()
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
