"""Three agents on one database, one SIGKILLed: the others expire its lease and requeue its
jobs that have attempts left (they end on the survivors) or end the others as lost; when the
killed agent comes back it takes a new epoch and kills its old attempts, never continuing or
recording them (fencing)."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.fencing import job_cgroups
from scheduler.agent.recovery import live_monitor_pid
from scheduler.agent.runner import run_dir_for
from scheduler.cgroups.detect import open_driver
from tests.agent_process import SHORT_LEASE, sigkill
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Expect, Workload, assert_counts, tally

pytestmark = pytest.mark.anyio
# The first attempt outlives the test unless it is killed; a retry ends at once.
FIRST_ATTEMPT_HANGS = 'if [ "$SCHEDULER_ATTEMPT" = 1 ]; then exec sleep 120; fi; sleep 0.2'


async def test_killed_node_expires_requeues_and_is_fenced_when_back(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
    workload: Workload,
    agents: Agents,
) -> None:
    a = await agents.start("a", state_dir=state_dir / "a", lease=SHORT_LEASE)
    requeued = await workload.submit(
        db, FIRST_ATTEMPT_HANGS, 8, Expect("succeeded", runs=2), max_attempts=2
    )
    lost = await workload.submit(db, FIRST_ATTEMPT_HANGS, 4, Expect("lost"), max_attempts=1)
    ids = requeued + lost
    with anyio.fail_after(30):
        while not set(ids) <= set(workload.executions()) or await db.fetchval(
            "SELECT count(DISTINCT job_id) FROM scheduler.usage WHERE job_id = ANY($1)", ids
        ) < len(ids):
            await anyio.sleep(0.05)
    for name, root in zip("bc", peer_cgroup_roots, strict=True):
        await agents.start(name, state_dir=state_dir / name, cgroup_root=root, lease=SHORT_LEASE)
    hit = await workload.hit(db)
    assert sorted(hit) == ids
    sigkill(a)
    await workload.wait_ended(db, timeout=40)
    assert await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'a'") == "down"
    nodes = await db.fetch("SELECT id, node FROM scheduler.jobs WHERE id = ANY($1)", requeued)
    assert {r["node"] for r in nodes} <= {"b", "c"}
    # The first attempts still run on a's host, under their monitors, though a is gone.
    runs_a = state_dir / "a" / "runs"
    run_dirs = [run_dir_for(runs_a, job_id, 1) for job_id in ids]
    assert all(live_monitor_pid(d) is not None for d in run_dirs)
    before = await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id", ids)
    billed = await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq")

    await agents.start("a", state_dir=state_dir / "a", lease=SHORT_LEASE)  # back, same name
    assert await db.fetchval("SELECT epoch FROM scheduler.nodes WHERE name = 'a'") == 2
    # Killed and removed before it said ready: no attempt of epoch 1 is continued.
    assert list(job_cgroups(open_driver(cgroup_root))) == []
    with anyio.fail_after(20):
        while any(live_monitor_pid(d) is not None for d in run_dirs):
            await anyio.sleep(0.05)
    await anyio.sleep(1.0)  # an agent that wrongly took them back would have recorded them
    assert await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id", ids) == (
        before
    )
    assert await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq") == billed

    result = await tally(db, workload, fault="g: node lost, expired, fenced", hit=hit)
    assert_counts(result)
    await no_jobs_left(
        workload,
        [state_dir / name / "runs" for name in "abc"],
        [cgroup_root, *peer_cgroup_roots],
    )
