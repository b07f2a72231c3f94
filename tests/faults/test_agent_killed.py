"""The agent SIGKILLed at four moments of a job's life: after its claim (before any process
started), while it runs, while it exits (ended, not yet recorded), and for good while it
exits (the agent is down when the job ends). A restart on the same node name and state
directory must end every job once, billed exactly once."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.rundirs import run_dir_for
from tests.agent_process import sigkill, wait_stopped
from tests.conftest import slow
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Expect, Workload, assert_counts, tally

pytestmark = pytest.mark.anyio


async def wait_executed(workload: Workload, ids: list[int]) -> None:
    """Until every job's command has started (its first line ran)."""
    with anyio.fail_after(slow(30)):
        while not set(ids) <= set(workload.executions()):
            await anyio.sleep(0.02)


async def test_sigkill_after_claim_before_start(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    agent = await agents.start(failpoints="after_claim=stop")
    ids = await workload.submit(db, "sleep 0.2", 12, max_attempts=2)
    log = agents.log("fault-node")
    await wait_stopped(agent, log)
    hit = await workload.hit(db)
    assert sorted(hit) == ids and set(hit.values()) == {1}  # all claimed in one statement
    sigkill(agent)
    assert workload.executions() == {}  # nothing started: the kill came before any monitor
    await agents.start()
    result = await tally(db, workload, fault="a: SIGKILL after claim", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])


async def test_sigkill_while_jobs_run(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    agent = await agents.start()
    ids = await workload.submit(db, "sleep 3", 12)
    await wait_executed(workload, ids)
    # Sampled before the kill: the restarted agent must continue these rows, not redo them.
    with anyio.fail_after(slow(20)):
        while await db.fetchval(
            "SELECT count(DISTINCT job_id) FROM scheduler.usage WHERE job_id = ANY($1)", ids
        ) < len(ids):
            await anyio.sleep(0.05)
    hit = await workload.hit(db)
    sigkill(agent)
    await anyio.sleep(0.5)
    await agents.start()
    result = await tally(db, workload, fault="b: SIGKILL while jobs run", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])


@pytest.mark.parametrize("point", ["before_record", "after_record"])
async def test_sigkill_while_a_job_exits(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    workload: Workload,
    agents: Agents,
    point: str,
) -> None:
    # before_record: ended, counters read, nothing committed; after_record: committed, its
    # cgroup not removed yet.
    agent = await agents.start(failpoints=f"{point}=stop")
    # Staggered ends: the first to end stops the agent at the point; the others end while it
    # is stopped, then killed.
    ids = await workload.submit(db, "sleep 0.$(( SCHEDULER_JOB_ID % 5 + 3 ))", 12)
    await wait_stopped(agent, agents.log("fault-node"))
    hit = await workload.hit(db)
    recorded = await db.fetchval(
        "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'succeeded'", ids
    )
    # Stopped at the first batch: none recorded yet, or only that batch.
    assert (recorded == 0) if point == "before_record" else (0 < recorded < len(ids))
    assert len(hit) == len(ids) - recorded
    sigkill(agent)
    await agents.start()
    result = await tally(db, workload, fault=f"c: SIGKILL while exiting ({point})", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])


async def test_jobs_exit_while_the_agent_is_down(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    agent = await agents.start()
    ids = await workload.submit(db, "sleep 1", 12)
    # These fail on their first attempt while the agent is down: the restart retries them.
    ids += await workload.submit(
        db,
        'sleep 1; [ "$SCHEDULER_ATTEMPT" = 2 ]',
        4,
        Expect("succeeded", runs=2),
        max_attempts=2,
    )
    await wait_executed(workload, ids)
    hit = await workload.hit(db)
    sigkill(agent)
    runs = state_dir / "run"
    with anyio.fail_after(slow(20)):
        while not all((run_dir_for(runs, i, 1) / "exit").exists() for i in ids):
            await anyio.sleep(0.05)
    await agents.start()
    result = await tally(db, workload, fault="d: jobs exit while agent down", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [runs], [cgroup_root])


async def test_sigkill_again_while_recording_exits_found_at_start(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    agent = await agents.start()
    ids = await workload.submit(db, "sleep 0.5", 6)
    ids += await workload.submit(db, "sleep 3", 6)  # still running at the second restart
    await wait_executed(workload, ids)
    hit = await workload.hit(db)
    sigkill(agent)
    runs = state_dir / "run"
    with anyio.fail_after(slow(20)):
        while not all((run_dir_for(runs, i, 1) / "exit").exists() for i in ids[:6]):
            await anyio.sleep(0.05)
    # The restart finds the exits and stops before their record commits; killed again.
    agent = await agents.start(failpoints="before_record=stop", ready=False)
    await wait_stopped(agent, agents.log("fault-node"))
    sigkill(agent)
    await agents.start()
    result = await tally(db, workload, fault="d2: SIGKILL again while recovering", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [runs], [cgroup_root])
