"""Jobs that fight their limits, among well-behaved ones: one allocates far beyond its memory
limit (the kernel OOM-kills it), one fork-bombs into its pids.max. Only they suffer: the
others end as they would alone, and the agent keeps serving and starting jobs."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from scheduler.cgroups.detect import detect_layout
from tests.conftest import slow
from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Expect, Workload, assert_counts, tally

pytestmark = pytest.mark.anyio
# tail keeps a line in memory until its newline, and /dev/zero has none: 200 MB in a 32 MiB job.
OOM = "head -c 200000000 /dev/zero | tail > /dev/null"
# A fork bomb in the background (forked once, before pids.max is reached); the job's main
# process then becomes a sleep (exec needs no new pid) and ends the job when it exits: 3 s
# here, scaled under emulation (the normal jobs must start while it still runs).
FORK_BOMB = f"(b() {{ b | b & }}; b) 2>/dev/null & exec sleep {slow(3):g}"
PIDS_MAX = 16


async def wait_executed(workload: Workload, ids: list[int]) -> None:
    with anyio.fail_after(slow(30)):
        while not set(ids) <= set(workload.executions()):
            await anyio.sleep(0.02)


def job_file(cgroup_root: str, job_id: int, name: str) -> Path:
    """A cgroup file of the job's leaf, in whichever hierarchy has it (on a pure v2 host
    the one tree is the cgroup2 mount itself)."""
    layout = detect_layout()
    for mount in sorted({*layout.v1.values(), *([layout.unified] if layout.unified else [])}):
        path = Path(mount) / cgroup_root / "default" / f"job-{job_id}" / name
        if path.exists():
            return path
    raise FileNotFoundError(name)


async def test_an_oom_job_among_normal_ones(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    await agents.start()
    normal = await workload.submit(db, "sleep 2", 10)
    [oom] = await workload.submit(
        db, OOM, expect=Expect("failed", oom_killed=True), memory_bytes=32 << 20, max_attempts=1
    )
    await wait_executed(workload, [*normal, oom])
    hit = await workload.hit(db)
    assert set(normal) <= set(hit)
    result = await tally(db, workload, fault="h: OOM job among normal ones", hit=hit)
    assert_counts(result)
    row = await db.fetchrow(
        "SELECT error, memory_peak_bytes FROM scheduler.jobs WHERE id = $1", oom
    )
    assert row is not None and "out of memory" in row["error"]
    assert row["memory_peak_bytes"] <= 32 << 20
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])


async def test_a_fork_bomb_under_pids_max_among_normal_ones(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    await agents.start()
    log = agents.log("fault-node").read_text()
    match = re.search(r"HTTP API on (http://[0-9.:]+)/v1", log)
    assert match is not None, log
    [bomb] = await workload.submit(
        db,
        FORK_BOMB,
        cpu=0.2,
        pids_max=PIDS_MAX,
    )
    await wait_executed(workload, [bomb])
    # The bomb pushes against pids.max: refused forks are counted, it never gets past it.
    events = job_file(cgroup_root, bomb, "pids.events")
    with anyio.fail_after(slow(10)):
        while int(events.read_text().split()[-1]) == 0:
            await anyio.sleep(0.05)
    assert int(job_file(cgroup_root, bomb, "pids.current").read_text()) <= PIDS_MAX
    # Meanwhile the agent starts, runs and records other jobs, and answers its probes.
    normal = await workload.submit(db, "sleep 1", 10)
    await wait_executed(workload, normal)
    hit = await workload.hit(db)
    assert bomb in hit
    async with httpx.AsyncClient(base_url=match.group(1), timeout=slow(5)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
    result = await tally(db, workload, fault="i: fork bomb under pids.max", hit=hit)
    assert_counts(result)
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])
