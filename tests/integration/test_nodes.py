"""Nodes: registration under a lease, heartbeats, one agent per node name, ``scheduler nodes``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.lease import boot_id
from scheduler.agent.service import run_agent, serve
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.cli import build_parser
from scheduler.cli.nodes import cmd_nodes
from scheduler.errors import LeaseLost, NodeNameTaken
from tests.conftest import agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final, wait_state

pytestmark = pytest.mark.anyio
# Short leases keep the tests short; 4 s: a loaded 2-core host may stall an event loop for a second; expiry still comes fast.
LEASE = {"lease_seconds": 4.0, "heartbeat_seconds": 0.5, "lease_grace_seconds": 0.5}


async def node(db: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM scheduler.nodes WHERE name = $1", name)
    assert row is not None
    return row


async def test_agent_registers_its_node_and_renews_its_lease(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, node_cpu=3.0, **LEASE)
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        first = await node(db, "test-node")
        assert (first["state"], first["epoch"], first["pid"]) == ("up", 1, os.getpid())
        assert first["boot_id"] == boot_id()
        assert first["cpu"] == 3
        with anyio.fail_after(slow(20)):
            while (await node(db, "test-node"))["lease_expires_at"] <= first["lease_expires_at"]:
                await anyio.sleep(0.1)
        job_id = await submit(db, ["true"])
        [row] = await wait_final(db, [job_id])
        tg.cancel_scope.cancel()
    assert (row["state"], row["node"], row["node_epoch"]) == ("succeeded", "test-node", 1)
    # A stopped agent no longer holds the name; its lease protects its jobs until it expires.
    stopped = await node(db, "test-node")
    assert stopped["pid"] is None and stopped["state"] == "up"
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        assert (await node(db, "test-node"))["epoch"] == 2
        tg.cancel_scope.cancel()


async def test_a_second_agent_with_the_same_node_name_refuses_to_start(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    other_root = f"{cgroup_root}-b"
    try:
        async with anyio.create_task_group() as tg:
            await start_agent(tg, agent_settings(dsn, state_dir / "a", cgroup_root, **LEASE))
            second = agent_settings(dsn, state_dir / "b", other_root, **LEASE)
            with pytest.raises(NodeNameTaken, match="held by a live agent"):
                with anyio.fail_after(slow(60)):
                    await run_agent(second, dsn)
            # The first agent still holds the node, at its epoch, and still runs jobs.
            assert (await node(db, "test-node"))["epoch"] == 1
            [row] = await wait_final(db, [await submit(db, ["true"])])
            assert row["state"] == "succeeded"
            tg.cancel_scope.cancel()
    finally:
        open_driver(other_root).remove_tree(CgroupPath(()))


async def test_nodes_command_lists_state_lease_capacity_and_load(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = agent_settings(
        dsn, state_dir, cgroup_root, node_cpu=2.0, node_memory_bytes=2**30, **LEASE
    )
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        job_id = await submit(db, ["sleep", "30"], cpu=0.5, memory_bytes=2**27)
        await wait_state(db, job_id, "running")
        capsys.readouterr()
        parser = build_parser()
        code = await cmd_nodes(settings, parser.parse_args(["nodes", "--json"]))
        # The agent's own log lines share stdout with the command here: take the JSON array.
        out = capsys.readouterr().out
        listed = json.loads(out[out.index("[\n") : out.index("\n]", out.index("[\n")) + 2])
        code_human = await cmd_nodes(settings, parser.parse_args(["nodes"]))
        human = capsys.readouterr().out
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_id
        )
        await wait_final(db, [job_id])
        tg.cancel_scope.cancel()
    assert (code, code_human) == (0, 0)
    [entry] = listed
    assert entry["name"] == "test-node" and entry["state"] == "up" and entry["epoch"] == 1
    assert 0 < entry["lease_left_seconds"] <= 4.0
    assert (entry["jobs"], entry["cpu_requested"], entry["memory_requested"]) == (1, "0.5", 2**27)
    assert (entry["cpu"], entry["memory_bytes"]) == ("2", 2**30)
    assert "test-node" in human and "0.5/2" in human


async def test_an_agent_that_lost_its_lease_kills_its_jobs_and_exits(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, **LEASE)
    driver = open_driver(cgroup_root)
    ready = anyio.Event()
    lost: list[LeaseLost] = []

    async def run() -> None:
        try:
            await run_agent(settings, dsn, on_ready=lambda _ready: ready.set())
        except LeaseLost as exc:
            lost.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(slow(60)):
            await ready.wait()
        job_id = await submit(db, ["sleep", "120"], cpu=0.1)
        await wait_state(db, job_id, "running")
        cgroup = CgroupPath(("default", f"job-{job_id}"))
        with anyio.fail_after(slow(20)):  # 'running' is written at the claim, before the launch
            while not (driver.exists(cgroup) and driver.populated(cgroup)):
                await anyio.sleep(0.05)
        # Another agent took the node name after the lease (as if it had expired).
        await db.execute("UPDATE scheduler.nodes SET epoch = epoch + 1 WHERE name = 'test-node'")
        with anyio.fail_after(slow(30)):
            while not lost:
                await anyio.sleep(0.05)
    assert "epoch 1 was marked down or taken by another agent" in str(lost[0])
    assert "killed its jobs" in str(lost[0])
    assert not driver.populated(cgroup)


async def test_serve_ends_with_the_node_name_error_itself(
    dsn: str, state_dir: Path, cgroup_root: str
) -> None:
    # What `scheduler serve` turns into "scheduler: error: ..." (not an exception group).
    other_root = f"{cgroup_root}-b"
    try:
        async with anyio.create_task_group() as tg:
            await start_agent(tg, agent_settings(dsn, state_dir / "a", cgroup_root, **LEASE))
            with pytest.raises(NodeNameTaken), anyio.fail_after(slow(60)):
                await serve(agent_settings(dsn, state_dir / "b", other_root, **LEASE))
            tg.cancel_scope.cancel()
    finally:
        open_driver(other_root).remove_tree(CgroupPath(()))
