"""Usage rows survive the database being away: spooled in the state directory, written once
it is back, exactly once, by an agent that kept running or by one restarted after SIGKILL."""

from __future__ import annotations

import itertools
import signal
import subprocess
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.accounting.spoolfile import decode
from scheduler.agent.spool import SUFFIX
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.pool import connect
from tests import agent_process
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import wait_final
from tests.integration.test_metrics_endpoint import parse, scrape

pytestmark = pytest.mark.anyio
FAST = {
    "sample_interval": 0.2,
    "sample_interval_floor": 0.05,
    # The database is away for seconds here: far from the lease, which would fence the node.
    "lease_seconds": 120.0,
    "heartbeat_seconds": 1.0,
}
# Burns cpu (within its 0.05-core quota) for 3..6 s, so every period has something to bill.
BURN = "end=$(($(date +%s) + {s})); while [ $(date +%s) -lt $end ]; do :; done; echo done"


async def submit_burners(db: asyncpg.Connection, seconds: list[int]) -> list[int]:
    return [
        int(
            await db.fetchval(
                "INSERT INTO scheduler.jobs (argv, cpu, memory_bytes)"
                " VALUES ($1, 0.05, 33554432) RETURNING id",
                ["sh", "-c", BURN.format(s=s)],
            )
        )
        for s in seconds
    ]


async def wait_rows(db: asyncpg.Connection, ids: list[int], at_least: int) -> None:
    """Until every job has ``at_least`` sampled rows in Postgres."""
    with anyio.fail_after(slow(30)):
        while (
            await db.fetchval(
                "SELECT count(*) FROM unnest($1::bigint[]) i WHERE (SELECT count(*) FROM"
                " scheduler.usage u WHERE u.job_id = i) < $2",
                ids,
                at_least,
            )
            > 0
        ):
            await anyio.sleep(0.05)


def spooled_rows(spool: Path) -> int:
    return sum(len(decode(p.read_bytes())) for p in spool.glob(f"*{SUFFIX}"))


async def wait_spooled(spool: Path, at_least: int = 1, timeout: float = 30) -> int:
    with anyio.fail_after(slow(timeout)):
        while (n := spooled_rows(spool)) < at_least:
            await anyio.sleep(0.05)
    return n


async def assert_books_balance(db: asyncpg.Connection, ids: list[int]) -> None:
    """Every job: rows numbered 1..n without a gap, contiguous periods, one closing row per
    attempt and it is the last, and the rows sum to the job's totals exactly."""
    for job_id in ids:
        job = await db.fetchrow("SELECT * FROM scheduler.jobs WHERE id = $1", job_id)
        rows = await db.fetch(
            "SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", job_id
        )
        assert job is not None and job["state"] == "succeeded", (job_id, job and job["error"])
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), job_id
        assert [r["final"] for r in rows] == [False] * (len(rows) - 1) + [True], job_id
        for before, after in itertools.pairwise(rows):
            assert after["period_start"] == before["period_end"], (job_id, after["seq"])
        assert sum(r["cpu_seconds"] for r in rows) == job["cpu_seconds"], job_id
        assert sum(r["io_read_bytes"] for r in rows) == job["io_read_bytes"], job_id
        assert sum(r["io_write_bytes"] for r in rows) == job["io_write_bytes"], job_id
        assert max(r["memory_peak_bytes"] for r in rows) == job["memory_peak_bytes"], job_id


async def readyz(agent: AgentHandle) -> tuple[int, list[str]]:
    response = await scrape(agent, "/readyz")
    body = response.json()
    return response.status_code, list(body.get("reasons", []))


async def test_database_stopped_while_jobs_run_rows_spooled_then_written_once(
    private_postgres: EmbeddedPostgres, state_dir: Path, cgroup_root: str
) -> None:
    server = private_postgres
    db = await connect(server.dsn)
    settings = agent_settings(server.dsn, state_dir, cgroup_root, **FAST)
    spool = settings.paths.spool_dir
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, settings)
        ids = await submit_burners(db, [3, 4, 5, 6])
        await wait_rows(db, ids, 2)
        await db.close()
        await server.stop()
        # Sweeps go on: their rows wait on disk; /readyz says why.
        await wait_spooled(spool, at_least=8)
        with anyio.fail_after(slow(10)):
            while not any("usage rows are spooled" in r for r in (await readyz(agent))[1]):
                await anyio.sleep(0.1)
        status, reasons = await readyz(agent)
        assert status == 503
        assert any("database unreachable" in r for r in reasons), reasons
        metrics = parse((await scrape(agent)).text)
        assert metrics[("scheduler_usage_spool_rows", ())] > 0
        assert metrics[("scheduler_usage_spool_bytes", ())] > 0
        assert metrics[("scheduler_agent_degraded", (("condition", "usage"),))] == 1
        await anyio.sleep(2.0)  # some jobs end while the database is away
        await server.start()
        db = await connect(server.dsn)
        try:
            await wait_final(db, ids, timeout=60)
            with anyio.fail_after(slow(30)):
                while (await readyz(agent))[0] != 200:
                    await anyio.sleep(0.1)
            await assert_books_balance(db, ids)
            assert list(spool.glob(f"*{SUFFIX}")) == []
            metrics = parse((await scrape(agent)).text)
            assert metrics[("scheduler_usage_spool_rows", ())] == 0
            assert metrics[("scheduler_usage_spooled_rows_total", ())] >= 8
            # Rows from the outage are in Postgres: they span it with the sweep's periods.
            assert await db.fetchval(
                "SELECT count(*) FROM scheduler.usage WHERE job_id = ANY($1)", ids
            ) >= 8 + len(ids)
        finally:
            await db.close()
        tg.cancel_scope.cancel()


async def test_spool_at_its_bound_holds_periods_and_loses_nothing(
    private_postgres: EmbeddedPostgres, state_dir: Path, cgroup_root: str
) -> None:
    server = private_postgres
    db = await connect(server.dsn)
    settings = agent_settings(server.dsn, state_dir, cgroup_root, **FAST, spool_max_bytes=4096)
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, settings)
        # Long enough for all four to run through the time the spool is full.
        ids = await submit_burners(db, [8, 9, 10, 11])
        await wait_rows(db, ids, 2)
        await db.close()
        await server.stop()
        # About 120 bytes a row, 4 rows a sweep, 5 sweeps a second: full within a second or two
        # (later on a loaded host, whose sweeps come late). Full: no room for another sweep's
        # rows. Then 2 s more, so that each job's held period outgrows 1.5 s.
        await wait_spooled(settings.paths.spool_dir, at_least=20)
        with anyio.fail_after(slow(30)):
            while parse((await scrape(agent)).text)[("scheduler_usage_spool_bytes", ())] < (
                4096 - 4 * 160
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(2.0)
        held = spooled_rows(settings.paths.spool_dir)
        metrics = parse((await scrape(agent)).text)
        assert metrics[("scheduler_usage_spool_bytes", ())] <= 4096
        assert held == metrics[("scheduler_usage_spool_rows", ())] < 4 * 5 * 3
        await server.start()
        db = await connect(server.dsn)
        try:
            await wait_final(db, ids, timeout=60)
            await assert_books_balance(db, ids)
            # The periods that found no room are covered by one longer row per job.
            assert await db.fetchval(
                "SELECT count(DISTINCT job_id) FROM scheduler.usage WHERE job_id = ANY($1)"
                " AND period_end - period_start > interval '1.5 seconds'",
                ids,
            ) == len(ids)
            assert list(settings.paths.spool_dir.glob(f"*{SUFFIX}")) == []
        finally:
            await db.close()
        tg.cancel_scope.cancel()


def start_serve(dsn: str, state_dir: Path, cgroup_root: str, log: Path) -> subprocess.Popen[bytes]:
    values = {f"SCHEDULER_{k.upper()}": str(v) for k, v in FAST.items()}
    return agent_process.start_serve(
        dsn, state_dir, cgroup_root, log, node="spool-node", env=values
    )


async def wait_ready(proc: subprocess.Popen[bytes], log: Path, count: int) -> None:
    await agent_process.wait_ready(proc, log, count, "spool-node")


async def test_sigkilled_agent_holding_spooled_rows_replays_them_once_restarted(
    private_postgres: EmbeddedPostgres, state_dir: Path, cgroup_root: str
) -> None:
    server = private_postgres
    log = state_dir / "serve.log"
    spool = state_dir / "spool"
    db = await connect(server.dsn)
    agent = start_serve(server.dsn, state_dir, cgroup_root, log)
    try:
        await wait_ready(agent, log, 1)
        ids = await submit_burners(db, [4, 5, 6])
        await wait_rows(db, ids, 2)
        await db.close()
        await server.stop()
        held = await wait_spooled(spool, at_least=6)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        held = spooled_rows(spool)  # what the killed agent left, all of it on disk
        assert held >= 6
        await server.start()
        db = await connect(server.dsn)
        before = await db.fetchval("SELECT count(*) FROM scheduler.usage")
        agent = start_serve(server.dsn, state_dir, cgroup_root, log)
        await wait_ready(agent, log, 2)
        await wait_final(db, ids, timeout=60)
        await assert_books_balance(db, ids)
        # The restart wrote the spooled rows (replayed before recovery), then its own.
        assert await db.fetchval("SELECT count(*) FROM scheduler.usage") >= before + held
        assert list(spool.glob(f"*{SUFFIX}")) == []
        text = log.read_text()
        assert '"event": "usage_spool_found"' in text
        assert '"event": "usage_spool_replayed"' in text
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        if not db.is_closed():
            await db.close()
