"""Jobs frozen (each on its own, or their whole tenant), their agent SIGKILLed and restarted
while they are frozen, then thawed: the restarted agent keeps them frozen (the state column
and the kernel agree), does not count frozen time against their time limits, and after the
thaw each ends once, billed once."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.rundirs import run_dir_for
from tests.agent_process import sigkill
from tests.conftest import slow
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Workload, assert_counts, tally

pytestmark = pytest.mark.anyio


def freezer_state(cgroup_root: str, job_id: int) -> str:
    """The kernel's word, its own freeze or an ancestor's: v1 freezer.state, or v2's
    ``frozen`` in cgroup.events."""
    v1 = Path("/sys/fs/cgroup/freezer") / cgroup_root / "default" / f"job-{job_id}"
    if v1.is_dir():
        return (v1 / "freezer.state").read_text().strip()
    v2 = Path("/sys/fs/cgroup") / cgroup_root / "default" / f"job-{job_id}" / "cgroup.events"
    return "FROZEN" if "frozen 1" in v2.read_text() else "THAWED"


async def steer(db: asyncpg.Connection, how: str, ids: list[int], *, frozen: bool) -> None:
    """Freeze or thaw the jobs, each on its own or through their tenant."""
    if how == "tenant":
        await db.execute("UPDATE scheduler.tenants SET frozen = $1 WHERE name = 'default'", frozen)
    else:
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = $2 WHERE id = ANY($1)",
            ids,
            "frozen" if frozen else "running",
        )


async def wait_states(db: asyncpg.Connection, ids: list[int], state: str) -> None:
    with anyio.fail_after(slow(20)):
        while await db.fetchval(
            "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state <> $2", ids, state
        ):
            await anyio.sleep(0.02)


@pytest.mark.parametrize("how", ["job", "tenant"])
async def test_frozen_jobs_survive_an_agent_restart_and_thaw(
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    workload: Workload,
    agents: Agents,
    how: str,
) -> None:
    agent = await agents.start()
    # 1.5 s of work each under a 3 s time limit, both scaled under emulation (where starting
    # the ten takes seconds too: unscaled, the first ended before the last had started, and
    # could never be frozen): frozen time must not use the limit up.
    limit = slow(3)
    ids = await workload.submit(db, f"sleep {slow(1.5):g}", 10, timeout_seconds=limit)
    with anyio.fail_after(slow(30)):
        while not set(ids) <= set(workload.executions()):
            await anyio.sleep(0.02)
    await steer(db, how, ids, frozen=True)
    await wait_states(db, ids, "frozen")
    hit = await workload.hit(db)
    sigkill(agent)
    await agents.start()
    await anyio.sleep(limit + 0.5)  # past their work and their time limit, had they run
    runs = state_dir / "run"
    assert not any((run_dir_for(runs, i, 1) / "exit").exists() for i in ids)
    assert {freezer_state(cgroup_root, i) for i in ids} == {"FROZEN"}
    assert set(
        await db.fetchval(
            "SELECT array_agg(DISTINCT state) FROM scheduler.jobs WHERE id = ANY($1)", ids
        )
    ) == {"frozen"}
    await steer(db, how, ids, frozen=False)
    result = await tally(db, workload, fault=f"j: freeze ({how}), agent restart, thaw", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [runs], [cgroup_root])
