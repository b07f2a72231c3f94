"""A node whose lease expires: marked down by the others, its attempts requeued or lost, and,
when its agent comes back, its stale attempts killed rather than continued (fencing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.fencing import job_cgroups
from scheduler.cgroups.detect import open_driver
from scheduler.config import Settings
from scheduler.db.queries import q
from scheduler.rundirs import run_dir_for
from scheduler.runtime.identity import live_monitor_pid
from tests.agent_process import SHORT_LEASE
from tests.conftest import AgentHandle, agent_settings, slow, start_agent, write_as_agent
from tests.integration.test_agent import submit, wait_final, wait_state

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    # These tests stage job states by hand, as only the agent may write them.
    await write_as_agent(db)


# The first attempt outlives the test unless it is killed; a retry ends at once.
ARGV = ["sh", "-c", 'if [ "$SCHEDULER_ATTEMPT" = 1 ]; then exec sleep 120; fi; echo retried']


@dataclass
class Cluster:
    a: AgentHandle
    settings_a: Settings
    retried: list[int]
    lost: int


def _settings(dsn: str, state_dir: Path, root: str, name: str) -> Settings:
    return agent_settings(
        dsn,
        state_dir / name,
        root,
        node_name=name,
        node_cpu=16.0,
        # Periodic usage rows for the first attempts: they must stay billed once.
        sample_interval=0.2,
        sample_interval_floor=0.05,
        **SHORT_LEASE,
    )


async def cluster(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    peer_cgroup_roots: list[str],
    cgroup_root: str,
    tg: anyio.abc.TaskGroup,
) -> Cluster:
    """Agent a runs four jobs (three with a retry left), then b and c join, then a stops."""
    settings_a = _settings(dsn, state_dir, cgroup_root, "a")
    a = await start_agent(tg, settings_a)
    retried = [await submit(db, ARGV, cpu=0.1, max_attempts=2) for _ in range(3)]
    lost = await submit(db, ARGV, cpu=0.1, max_attempts=1)
    for job_id in [*retried, lost]:
        await wait_state(db, job_id, "running")
    # Let the sampler of a commit a few periods of the first attempts.
    with anyio.fail_after(slow(20)):
        while await db.fetchval("SELECT count(DISTINCT job_id) FROM scheduler.usage") < 4:
            await anyio.sleep(0.05)
    for name, root in zip("bc", peer_cgroup_roots, strict=True):
        await start_agent(tg, _settings(dsn, state_dir, root, name))
    a.stop()  # as abruptly as a cancelled task: the jobs keep running under their monitors
    return Cluster(a, settings_a, retried, lost)


async def check_requeued_and_billed_once(db: asyncpg.Connection, c: Cluster) -> None:
    rows = {r["id"]: r for r in await wait_final(db, [*c.retried, c.lost], timeout=60)}
    assert await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'a'") == "down"
    for job_id in c.retried:
        row = rows[job_id]
        assert (row["state"], row["attempts"]) == ("succeeded", 2), row
        assert row["node"] in ("b", "c") and row["node_epoch"] == 1
    lost = rows[c.lost]
    assert (lost["state"], lost["node"], lost["attempts"]) == ("lost", "a", 1)
    assert lost["finished_at"] is not None and "lease" in lost["error"]
    usage = await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq")
    finals = [(u["job_id"], u["attempt"]) for u in usage if u["final"]]
    expected = [(j, n) for j in sorted([*c.retried, c.lost]) for n in (1, 2)]
    expected.remove((c.lost, 2))
    assert sorted(finals) == expected  # exactly one closing row per attempt
    for u in usage:
        assert u["node"] == ("a" if u["attempt"] == 1 else rows[u["job_id"]]["node"])
    # The periodic rows of a committed before it stopped are kept, below the closing row.
    assert sum(1 for u in usage if u["attempt"] == 1 and not u["final"]) >= 4
    # The lost job's totals are what its rows billed.
    billed = [u for u in usage if u["job_id"] == c.lost]
    assert lost["cpu_seconds"] == sum(u["cpu_seconds"] for u in billed)


async def test_expired_node_jobs_are_requeued_and_finished_by_the_others(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
) -> None:
    async with anyio.create_task_group() as tg:
        c = await cluster(dsn, db, state_dir, peer_cgroup_roots, cgroup_root, tg)
        await check_requeued_and_billed_once(db, c)
        tg.cancel_scope.cancel()


async def test_an_agent_back_after_its_lease_expired_kills_its_stale_attempts(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
) -> None:
    driver = open_driver(cgroup_root)
    async with anyio.create_task_group() as tg:
        c = await cluster(dsn, db, state_dir, peer_cgroup_roots, cgroup_root, tg)
        await check_requeued_and_billed_once(db, c)
        ids = [*c.retried, c.lost]
        run_dirs = [run_dir_for(c.settings_a.paths.monitors_dir, job_id, 1) for job_id in ids]
        # The first attempts still run on a, under their monitors, though the jobs moved on.
        assert all(live_monitor_pid(d) is not None for d in run_dirs)
        assert sorted(job_id for job_id, _ in job_cgroups(driver)) == sorted(ids)
        before = await db.fetch("SELECT * FROM scheduler.jobs ORDER BY id")
        billed = await db.fetchval("SELECT count(*) FROM scheduler.usage")

        await start_agent(tg, c.settings_a)  # a comes back, on its old state directory
        node = await db.fetchrow("SELECT state, epoch FROM scheduler.nodes WHERE name = 'a'")
        assert node is not None and (node["state"], node["epoch"]) == ("up", 2)
        # Killed and removed before the agent said it was ready; never recorded.
        assert list(job_cgroups(driver)) == []
        with anyio.fail_after(slow(20)):
            while any(live_monitor_pid(d) is not None for d in run_dirs):
                await anyio.sleep(0.05)
        await anyio.sleep(1.0)  # a recorder that wrongly took the attempts would have by now
        assert await db.fetch("SELECT * FROM scheduler.jobs ORDER BY id") == before
        assert await db.fetchval("SELECT count(*) FROM scheduler.usage") == billed
        # The node is back in service under its new epoch.
        [row] = await wait_final(db, [await submit(db, ["true"], cpu=0.1)])
        assert row["state"] == "succeeded"
        tg.cancel_scope.cancel()


async def test_expiry_requeues_loses_or_cancels_in_one_statement(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO scheduler.nodes (name, epoch, lease_expires_at, version, cgroup_driver, cpu,"
        " memory_bytes, boot_id, pid) VALUES"
        " ('x', 3, now() - interval '10 s', 'v', 'v2', 1, 1073741824, 'boot', 1),"
        " ('y', 1, now() + interval '60 s', 'v', 'v2', 1, 1073741824, 'boot', 1)"
    )
    ids = [await submit(db, ["true"], max_attempts=m) for m in (2, 1, 2, 2)]
    await db.execute(
        "UPDATE scheduler.jobs SET state = 'running', node = CASE WHEN id = $2 THEN 'y' ELSE 'x'"
        " END, node_epoch = 3, attempts = 1, started_at = now() WHERE id = ANY($1)",
        ids,
        ids[3],
    )
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", ids[2])
    rows = await db.fetch(q("expire_nodes"), 5.0)
    assert [(r["node"], r["job_id"], r["state"]) for r in rows] == [
        ("x", ids[0], "queued"),
        ("x", ids[1], "lost"),
        ("x", ids[2], "cancelled"),
    ]
    assert await db.fetch(q("expire_nodes"), 5.0) == []  # done once
    jobs = {r["id"]: r for r in await db.fetch("SELECT * FROM scheduler.jobs")}
    assert jobs[ids[0]]["node"] is None and jobs[ids[0]]["finished_at"] is None
    assert jobs[ids[1]]["finished_at"] is not None and "node x (epoch 3)" in jobs[ids[1]]["error"]
    assert jobs[ids[3]]["state"] == "running"  # node y's lease runs
    finals = await db.fetch("SELECT job_id, attempt, node FROM scheduler.usage WHERE final")
    assert sorted((f["job_id"], f["attempt"], f["node"]) for f in finals) == [
        (i, 1, "x") for i in ids[:3]
    ]
    assert await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'x'") == "down"
