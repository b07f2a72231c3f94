"""The agent's state directory on a tiny tmpfs that fills up while its jobs run: every running
job's exit is still recorded and billed (each monitor reserved its record's space when it
started), nothing new starts while the disk is full, and all resumes once space is freed."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from tests.conftest import slow
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Workload, assert_counts, tally
from tests.tmpfs import fill, free_bytes, tiny_tmpfs

pytestmark = pytest.mark.anyio


async def test_state_directory_on_a_full_tmpfs(
    db: asyncpg.Connection, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    # The executions are recorded in the workload's own directory (not on the full disk).
    with tiny_tmpfs("32m") as state:
        await agents.start(state_dir=state, state_min_free_bytes=1 << 20)
        running = await workload.submit(db, "sleep 2", 12)
        with anyio.fail_after(slow(30)):
            while not set(running) <= set(workload.executions()):
                await anyio.sleep(0.02)
        filler = fill(state)
        assert free_bytes(state) == 0
        hit = await workload.hit(db)
        assert set(hit) == set(running)
        # Jobs that arrive while the disk is full wait: none starts.
        waiting = await workload.submit(db, "true", 4)
        with anyio.fail_after(slow(30)):
            while await db.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'succeeded'",
                running,
            ) < len(running):
                await anyio.sleep(0.05)
        states = await db.fetch(
            "SELECT DISTINCT state FROM scheduler.jobs WHERE id = ANY($1)", waiting
        )
        assert [r["state"] for r in states] == ["queued"]
        assert not set(waiting) & set(workload.executions())
        filler.unlink()
        result = await tally(db, workload, fault="k: state directory full", hit=hit)
        assert_counts(result)
        await no_jobs_left(workload, [state / "run"], [cgroup_root])
        agents.stop_all()
