"""scheduler/repos/nodes.py on a real database: the statements of `scheduler nodes` (list,
drain, undrain and its wake-up of the dispatchers, forget), without an agent."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from scheduler.repos import nodes as node_repo
from tests.conftest import slow

pytestmark = pytest.mark.anyio


async def _add_node(db: asyncpg.Connection, name: str) -> None:
    await db.execute(
        "INSERT INTO scheduler.nodes (name, lease_expires_at, version, cgroup_driver, cpu,"
        " memory_bytes, boot_id) VALUES ($1, now() + interval '1 minute', 'v', 'v1', 2,"
        " 1073741824, 'b')",
        name,
    )


async def test_drain_undrain_wakes_the_dispatchers_and_forget_takes_only_a_down_node(
    db: asyncpg.Connection, dsn: str
) -> None:
    await _add_node(db, "n1")
    listed = await node_repo.list_nodes(db)
    assert [(r["name"], r["state"], r["drained"], r["jobs"]) for r in listed] == [
        ("n1", "up", False, 0)
    ]
    heard: list[tuple[str, str]] = []
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener("scheduler_jobs", lambda *a: heard.append((a[2], a[3])))
        drained = await node_repo.set_drained(db, "n1", True)
        assert drained is not None
        assert (drained["name"], drained["drained"]) == ("n1", True)
        # A round trip on the listener delivers what was notified before it: a drain has
        # nothing new to claim, so nothing.
        await listener.fetchval("SELECT 1")
        assert heard == []
        undrained = await node_repo.set_drained(db, "n1", False)
        assert undrained is not None
        assert undrained["drained"] is False
        with anyio.fail_after(slow(10)):
            while not heard:
                await anyio.sleep(0.01)
        assert heard == [("scheduler_jobs", "queued")]
    finally:
        await listener.close()
    assert await node_repo.set_drained(db, "nope", True) is None
    # An up node is not forgotten; a down one without running jobs is.
    assert await node_repo.forget(db, "n1") is False
    await db.execute("UPDATE scheduler.nodes SET state = 'down' WHERE name = 'n1'")
    assert await node_repo.forget(db, "n1") is True
    assert await node_repo.list_nodes(db) == []
    assert await node_repo.forget(db, "n1") is False
