"""Nodes of different sizes and labels, and drain (issue 18 item 6), on real agents: a job
runs only on a node whose labels it asks for; a job too big for one node waits for a bigger
one and fails only when no node of the fleet could take it; a drained node starts nothing
new while its running job finishes, and claims again once undrained."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.config import Settings
from tests.conftest import agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final, wait_state
from tests.integration.test_arrays import cli

pytestmark = pytest.mark.anyio
LEASE = {"lease_seconds": 4.0, "heartbeat_seconds": 0.5, "lease_grace_seconds": 0.5}


def _settings(dsn: str, state_dir: Path, root: str, name: str, **extra: object) -> Settings:
    return agent_settings(dsn, state_dir / name, root, node_name=name, **LEASE, **extra)


async def stays_queued(db: asyncpg.Connection, job_id: int, seconds: float) -> None:
    """The job is still queued after several of the agents' poll intervals (0.5 s), which
    is when they check for jobs that can never run."""
    with anyio.move_on_after(seconds):
        while True:
            state = await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id)
            assert state == "queued", (job_id, state)
            await anyio.sleep(0.05)


@pytest.mark.timeout(300)
async def test_constraints_and_sizes_pick_the_node_and_fail_only_without_any(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
) -> None:
    async with anyio.create_task_group() as tg:
        small = await start_agent(
            tg,
            _settings(dsn, state_dir, cgroup_root, "small", node_cpu=1.0, node_labels="zone=a"),
        )
        # Too big for the only node there is: it waits (no node of the fleet could take it
        # yet, but this one is not the fleet's last word), then fails once it is clear...
        big_job = await submit(db, ["sh", "-c", "echo big"], cpu=2)
        on_b = await submit(db, ["true"], cpu=0.1, constraints={"zone": "b"})
        on_a = await submit(db, ["true"], cpu=0.1, constraints={"zone": "a"})
        [a_row] = await wait_final(db, [on_a])
        assert (a_row["state"], a_row["node"]) == ("succeeded", "small")
        # ...no: the claiming node being small is no reason. With no other node at all, the
        # fleet is this node: the big job and the zone=b job cannot ever run.
        rows = {r["id"]: r for r in await wait_final(db, [big_job, on_b])}
        assert rows[big_job]["state"] == "failed"
        assert (
            rows[big_job]["error"]
            == "cannot ever run: asks for 2 cpu cores, the largest node has 1"
        )
        assert rows[on_b]["error"] == 'cannot ever run: no node has the labels {"zone": "b"}'

        # A big node joins (down at first: registered, then stopped): jobs it alone can
        # take wait for it while it is down, and run on it when it is back.
        big_settings = _settings(
            dsn, state_dir, peer_cgroup_roots[0], "big", node_cpu=4.0, node_labels="zone=b,gpu=yes"
        )
        big = await start_agent(tg, big_settings)
        big.stop()
        with anyio.fail_after(slow(30)):
            while (
                await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'big'") != "down"
            ):
                await anyio.sleep(0.1)
        waits = await submit(db, ["sh", "-c", "echo big"], cpu=2)
        gpu = await submit(db, ["true"], cpu=0.1, constraints={"gpu": "yes"})
        wrong = await submit(db, ["true"], cpu=0.1, constraints={"zone": "a", "gpu": "yes"})
        for job_id in (waits, gpu):
            await stays_queued(db, job_id, slow(3))
        [wrong_row] = await wait_final(db, [wrong])
        assert wrong_row["error"] == (
            'cannot ever run: no node has the labels {"gpu": "yes", "zone": "a"}'
        )
        big = await start_agent(tg, big_settings)
        rows = {r["id"]: r for r in await wait_final(db, [waits, gpu], timeout=60)}
        assert {(r["state"], r["node"]) for r in rows.values()} == {("succeeded", "big")}

        # Gone for good: once the operator forgets the down node, what only it fitted fails.
        big.stop()
        with anyio.fail_after(slow(30)):
            while (
                await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'big'") != "down"
            ):
                await anyio.sleep(0.1)
        orphan = await submit(db, ["true"], cpu=3)
        await stays_queued(db, orphan, slow(2))
        await cli(small, "nodes", "forget", "big")
        [orphan_row] = await wait_final(db, [orphan])
        assert (
            orphan_row["error"] == "cannot ever run: asks for 3 cpu cores, the largest node has 1"
        )
        tg.cancel_scope.cancel()


@pytest.mark.timeout(300)
async def test_a_drained_node_finishes_its_job_claims_nothing_then_resumes(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
) -> None:
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, _settings(dsn, state_dir, cgroup_root, "n1"))
        # Long enough to be still running when the drain is in place, after three CLI runs
        # (seconds each under emulation: scaled there).
        first = await submit(db, ["sh", "-c", f"sleep {slow(6):g}; echo done"], cpu=0.1)
        await wait_state(db, first, "running")
        await cli(agent, "nodes", "drain", "n1")
        listed = json.loads(await cli(agent, "nodes", "--json"))
        assert [(n["name"], n["drained"]) for n in listed] == [("n1", True)]
        human = await cli(agent, "nodes")
        assert "up,drained" in human
        second = await submit(db, ["true"], cpu=0.1)
        await stays_queued(db, second, 1)
        assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", first) == (
            "running"
        )
        [done] = await wait_final(db, [first])
        assert done["state"] == "succeeded"
        # Its running job ended and freed room: still nothing new starts on a drained node.
        await stays_queued(db, second, slow(2))
        # An agent restart keeps the drain (the operator's, not the agent's setting).
        agent.stop()
        with anyio.fail_after(slow(30)):  # its lease runs out: a new agent may take the name
            while await db.fetchval(
                "SELECT lease_expires_at > now() FROM scheduler.nodes WHERE name = 'n1'"
            ):
                await anyio.sleep(0.1)
        agent = await start_agent(tg, _settings(dsn, state_dir, cgroup_root, "n1"))
        assert await db.fetchval("SELECT epoch FROM scheduler.nodes WHERE name = 'n1'") == 2
        await stays_queued(db, second, slow(2))
        await cli(agent, "nodes", "undrain", "n1")
        [resumed] = await wait_final(db, [second])
        assert (resumed["state"], resumed["node"]) == ("succeeded", "n1")
        tg.cancel_scope.cancel()


async def test_constraints_and_node_labels_are_checked_in_sql(db: asyncpg.Connection) -> None:
    """Whoever writes the row (a tenant role in psql, a schedule's template), the database
    holds labels and constraints to the rule: an object of at most 32 label strings."""
    fine = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, constraints) VALUES (ARRAY['true'], $1) RETURNING id",
        {"zone": "a", "gpu": ""},
    )
    assert fine is not None
    for bad in (
        {"zone": 1},
        {"zone": {"a": "b"}},
        {"zone;drop": "a"},
        {"zone": "a b"},
        {f"k{i}": "v" for i in range(33)},
        ["zone"],
    ):
        with pytest.raises(asyncpg.CheckViolationError, match="job_constraints_valid"):
            await db.execute(
                "INSERT INTO scheduler.jobs (argv, constraints) VALUES (ARRAY['true'], $1)", bad
            )
    with pytest.raises(asyncpg.CheckViolationError, match="node_labels_valid"):
        await db.execute(
            "INSERT INTO scheduler.nodes (name, lease_expires_at, version, cgroup_driver, cpu,"
            " memory_bytes, boot_id, labels) VALUES ('x', now(), 'v', 'v1', 1, 1, 'b', $1)",
            {"zone": "a\nb"},
        )
    # A schedule's template may carry constraints (scheduler.schedule_job_fields).
    job_id = await db.fetchval(
        "SELECT scheduler.schedule_job_insert('default', NULL, $1, now())",
        {"argv": ["true"], "constraints": {"zone": "b"}},
    )
    assert await db.fetchval("SELECT constraints FROM scheduler.jobs WHERE id = $1", job_id) == {
        "zone": "b"
    }
