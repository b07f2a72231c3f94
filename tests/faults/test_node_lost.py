"""Three agents on one database, one SIGKILLed (or paused): the others expire its lease and
requeue its jobs that have attempts left (they end on the survivors) or end the others as
lost; when the killed agent comes back it takes a new epoch and kills its old attempts, and a
paused one that resumes kills them and exits: neither continues, records or bills them
(fencing). An agent that stalls holding the claim lock does not stop the others claiming."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.fencing import job_cgroups
from scheduler.cgroups.detect import open_driver
from scheduler.rundirs import run_dir_for
from scheduler.runtime.identity import live_monitor_pid
from tests.agent_process import SHORT_LEASE, sigkill, wait_stopped
from tests.conftest import slow
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Expect, Workload, assert_counts, tally

pytestmark = pytest.mark.anyio
# The first attempt outlives the test unless it is killed; a retry ends at once.
FIRST_ATTEMPT_HANGS = 'if [ "$SCHEDULER_ATTEMPT" = 1 ]; then exec sleep 120; fi; sleep 0.2'


async def lose_node_a(
    db: asyncpg.Connection,
    state_dir: Path,
    peer_cgroup_roots: list[str],
    workload: Workload,
    agents: Agents,
) -> tuple[subprocess.Popen[bytes], dict[int, int]]:
    """Agent a runs the jobs' first attempts, b and c join; returns a and the attempts."""
    a = await agents.start("a", state_dir=state_dir / "a", lease=SHORT_LEASE)
    requeued = await workload.submit(
        db, FIRST_ATTEMPT_HANGS, 8, Expect("succeeded", runs=2), max_attempts=2
    )
    lost = await workload.submit(db, FIRST_ATTEMPT_HANGS, 4, Expect("lost"), max_attempts=1)
    ids = requeued + lost
    with anyio.fail_after(slow(30)):
        while not set(ids) <= set(workload.executions()) or await db.fetchval(
            "SELECT count(DISTINCT job_id) FROM scheduler.usage WHERE job_id = ANY($1)", ids
        ) < len(ids):
            await anyio.sleep(0.05)
    for name, root in zip("bc", peer_cgroup_roots, strict=True):
        await agents.start(name, state_dir=state_dir / name, cgroup_root=root, lease=SHORT_LEASE)
    hit = await workload.hit(db)
    assert sorted(hit) == ids
    return a, hit


async def check_moved_on(db: asyncpg.Connection, workload: Workload) -> None:
    """a is down; its jobs were requeued and ended on b and c, or lost."""
    await workload.wait_ended(db, timeout=40)
    assert await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'a'") == "down"
    rows = await db.fetch(
        "SELECT node, attempts FROM scheduler.jobs WHERE id = ANY($1)", list(workload.expected)
    )
    assert {r["node"] for r in rows if r["attempts"] == 2} <= {"b", "c"}


async def test_killed_node_expires_requeues_and_is_fenced_when_back(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
    workload: Workload,
    agents: Agents,
) -> None:
    a, hit = await lose_node_a(db, state_dir, peer_cgroup_roots, workload, agents)
    sigkill(a)
    await check_moved_on(db, workload)
    ids = list(workload.expected)
    # The first attempts still run on a's host, under their monitors, though a is gone.
    runs_a = state_dir / "a" / "run"
    run_dirs = [run_dir_for(runs_a, job_id, 1) for job_id in ids]
    assert all(live_monitor_pid(d) is not None for d in run_dirs)
    before = await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id", ids)
    billed = await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq")

    await agents.start("a", state_dir=state_dir / "a", lease=SHORT_LEASE)  # back, same name
    assert await db.fetchval("SELECT epoch FROM scheduler.nodes WHERE name = 'a'") == 2
    # Killed and removed before it said ready: no attempt of epoch 1 is continued.
    assert list(job_cgroups(open_driver(cgroup_root))) == []
    with anyio.fail_after(slow(20)):
        while any(live_monitor_pid(d) is not None for d in run_dirs):
            await anyio.sleep(0.05)
    await anyio.sleep(1.0)  # an agent that wrongly took them back would have recorded them
    assert await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id", ids) == (
        before
    )
    assert await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq") == billed

    result = await tally(db, workload, fault="g: node killed, expired, fenced", hit=hit)
    assert_counts(result)
    await no_jobs_left(
        workload,
        [state_dir / name / "run" for name in "abc"],
        [cgroup_root, *peer_cgroup_roots],
    )


async def test_paused_node_expires_and_fences_itself_when_resumed(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
    workload: Workload,
    agents: Agents,
) -> None:
    a, hit = await lose_node_a(db, state_dir, peer_cgroup_roots, workload, agents)
    a.send_signal(signal.SIGSTOP)  # a pause longer than the lease (a VM stall, a stuck host)
    await check_moved_on(db, workload)
    ids = list(workload.expected)
    before = await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id", ids)
    billed = await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq")
    a.send_signal(signal.SIGCONT)
    # It finds its lease lost: kills its attempts and exits, writing nothing for them.
    with anyio.fail_after(slow(20)):
        while a.poll() is None:
            await anyio.sleep(0.05)
    assert a.returncode == 1 and "lease" in agents.log("a").read_text()
    runs_a = state_dir / "a" / "run"
    with anyio.fail_after(slow(20)):
        while any(live_monitor_pid(run_dir_for(runs_a, i, 1)) is not None for i in ids):
            await anyio.sleep(0.05)
    assert await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id", ids) == (
        before
    )
    assert await db.fetch("SELECT * FROM scheduler.usage ORDER BY job_id, seq") == billed
    result = await tally(db, workload, fault="g2: node paused, expired, resumed", hit=hit)
    assert_counts(result)
    await agents.start("a", state_dir=state_dir / "a", lease=SHORT_LEASE)  # removes its cgroups
    await no_jobs_left(
        workload,
        [state_dir / name / "run" for name in "abc"],
        [cgroup_root, *peer_cgroup_roots],
    )


async def test_node_stalled_holding_the_claim_lock_does_not_stop_the_others(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
    workload: Workload,
    agents: Agents,
) -> None:
    # a stops inside its first claim's transaction, holding the lock every node's claims take.
    a = await agents.start(
        "a",
        state_dir=state_dir / "a",
        lease=SHORT_LEASE,
        failpoints="in_claim_lock=stop",
        ready=False,
    )
    await wait_stopped(a, agents.log("a"))
    # The claim lock is scheduler.claim_lock's row, locked FOR UPDATE (migrations/0010): a's
    # session holds the table's row-share lock while its transaction holds the row.
    held = await db.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)"
        " WHERE l.locktype = 'relation' AND l.relation = 'scheduler.claim_lock'::regclass"
        " AND l.mode = 'RowShareLock' AND l.granted AND s.application_name = 'scheduler a'"
    )
    assert held == 1
    ids = await workload.submit(db, "sleep 0.1", 6)
    await agents.start(
        "b", state_dir=state_dir / "b", cgroup_root=peer_cgroup_roots[0], lease=SHORT_LEASE
    )
    # Postgres ends a's session once it idled a lease inside its transaction; b claims then.
    hit = {job_id: 1 for job_id in ids}  # their first attempts' claims were held up
    result = await tally(db, workload, fault="g3: node stalled holding the claim lock", hit=hit)
    assert_counts(result)
    nodes = await db.fetch("SELECT DISTINCT node FROM scheduler.jobs WHERE id = ANY($1)", ids)
    assert [r["node"] for r in nodes] == ["b"]
    with anyio.fail_after(slow(20)):
        while await db.fetchval("SELECT state FROM scheduler.nodes WHERE name = 'a'") != "down":
            await anyio.sleep(0.05)
    a.send_signal(signal.SIGCONT)  # its transaction is gone, its lease lost: it exits
    with anyio.fail_after(slow(20)):
        while a.poll() is None:
            await anyio.sleep(0.05)
    assert a.returncode == 1 and "lease" in agents.log("a").read_text()
    await no_jobs_left(
        workload,
        [state_dir / name / "run" for name in "ab"],
        [cgroup_root, *peer_cgroup_roots],
    )
