"""Policy with a running agent: retries with backoff, delayed start, fair share of real cpu,
and a job larger than the node."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.rundirs import run_dir_for
from tests.agent_process import wait_gone
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final

pytestmark = pytest.mark.anyio


async def test_a_job_failing_twice_then_succeeding_is_retried_with_backoff(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    script = 'echo "attempt $SCHEDULER_ATTEMPT"; [ "$SCHEDULER_ATTEMPT" -ge 3 ] || exit 7'
    job_id = await submit(db, ["sh", "-c", script], max_attempts=3)
    [row] = await wait_final(db, [job_id], timeout=30)
    assert (row["state"], row["attempts"], row["exit_code"]) == ("succeeded", 3, 0)
    usage = await db.fetch(
        "SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY attempt", job_id
    )
    # Each attempt has its own closing usage row and its own output; the monitors' records
    # are removed once recorded.
    assert [(u["attempt"], u["final"], u["seq"]) for u in usage] == [
        (1, True, 1),
        (2, True, 2),
        (3, True, 3),
    ]
    for attempt in (1, 2, 3):
        run_dir = run_dir_for(agent.settings.paths.runs_dir, job_id, attempt)
        assert (run_dir / "stdout").read_text() == f"attempt {attempt}\n"
        await wait_gone(run_dir_for(agent.settings.paths.monitors_dir, job_id, attempt))
        assert not run_dir_for(agent.settings.paths.monitors_dir, job_id, attempt).exists()
    # Exponential backoff with jitter: [0.5, 1] s after the first failure, [1, 2] s after the
    # second (the bounds' lower halves are certain).
    gap1 = (usage[1]["period_start"] - usage[0]["period_end"]).total_seconds()
    gap2 = (usage[2]["period_start"] - usage[1]["period_end"]).total_seconds()
    assert gap1 >= 0.5
    assert gap2 >= 1.0


async def test_a_failing_job_stops_after_max_attempts(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    job_id = await submit(db, ["sh", "-c", "exit 3"], max_attempts=2)
    [row] = await wait_final(db, [job_id], timeout=30)
    assert (row["state"], row["attempts"], row["exit_code"]) == ("failed", 2, 3)


async def test_run_at_delays_the_start(db: asyncpg.Connection, agent: AgentHandle) -> None:
    job_id = int(
        await db.fetchval(
            "INSERT INTO scheduler.jobs (argv, run_at) VALUES (ARRAY['true'],"
            " now() + interval '1 second') RETURNING id"
        )
    )
    run_at = await db.fetchval("SELECT run_at FROM scheduler.jobs WHERE id = $1", job_id)
    await anyio.sleep(0.5)
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id) == "queued"
    [row] = await wait_final(db, [job_id], timeout=10)
    assert row["state"] == "succeeded"
    assert row["started_at"] >= run_at


async def test_a_job_larger_than_the_node_fails_at_once(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, node_cpu=2.0)
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        job_id = await submit(db, ["true"], cpu=Decimal(3))
        [row] = await wait_final(db, [job_id], timeout=5)
        tg.cancel_scope.cancel()
    assert row["state"] == "failed"
    assert row["error"] == "cannot ever run: asks for 3 cpu cores, the largest node has 2"


async def test_tenants_weighted_one_to_three_get_cpu_one_to_three(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    """Both tenants flood the queue with cpu-burning jobs (0.5 core, 2 s of running each) on
    a node of 2 cores: fair share gives 'light' one slot in four, and the kernel's cpu.shares
    (from the weights) hold the same ratio should the host be busy."""
    await db.execute(
        "INSERT INTO scheduler.tenants (name, weight) VALUES ('light', 1), ('heavy', 3)"
    )
    settings = agent_settings(dsn, state_dir, cgroup_root, node_cpu=2.0)
    driver = open_driver(cgroup_root)

    def cpu(tenant: str) -> int:
        path = CgroupPath((tenant,))
        return driver.read_usage(path).cpu_ns if driver.exists(path) else 0

    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        # One statement: both floods are committed (and seen by the claim) together.
        await db.execute(
            "INSERT INTO scheduler.jobs (tenant, argv, cpu, timeout_seconds)"
            " SELECT CASE WHEN g % 2 = 0 THEN 'light' ELSE 'heavy' END,"
            " ARRAY['sh', '-c', 'while :; do :; done'], 0.5, 2 FROM generate_series(1, 80) g"
        )
        with anyio.fail_after(slow(20)):
            while (
                await db.fetchval("SELECT count(*) FROM scheduler.jobs WHERE state = 'running'") < 4
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)
        light0, heavy0 = cpu("light"), cpu("heavy")
        await anyio.sleep(6.0)
        light, heavy = cpu("light") - light0, cpu("heavy") - heavy0
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled'"
            " WHERE state IN ('queued', 'running', 'frozen')"
        )
        ids = [r["id"] for r in await db.fetch("SELECT id FROM scheduler.jobs")]
        await wait_final(db, ids, timeout=30)
        tg.cancel_scope.cancel()
    assert light > 0.5e9  # light ran (about 0.5 core), it was not starved
    ratio = heavy / light
    assert 2.2 <= ratio <= 4.0, (light, heavy, ratio)
    timed_out = await db.fetchval("SELECT count(*) FROM scheduler.jobs WHERE state = 'timed_out'")
    assert timed_out >= 8  # the slots turned over during the window
