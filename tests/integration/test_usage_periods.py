"""The billing invariant on real jobs: for every job, Σ usage rows = the job's totals = the
kernel's counters at exit; periods are contiguous, numbered 1..n, with one closing row."""

from __future__ import annotations

import itertools
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from tests import cgroup_files
from tests.conftest import agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final, wait_state

pytestmark = pytest.mark.anyio
FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.1}


def kernel_resets_the_peak() -> bool:
    """Whether this host's memory high-water mark can be reset per period: v1's always can
    (memory.max_usage_in_bytes); v2's memory.peak takes a write from Linux 6.12 on (the
    reset is seen through the writer's open file only, so trying it here changes nothing
    for anyone else). Before 6.12 root may still open it for writing; the write fails, as
    the agent's CounterReader finds."""
    if not cgroup_files.pure_v2():
        return True
    # This process's own cgroup (the top one has no memory.peak).
    own = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1].lstrip("/")
    try:
        fd = os.open(cgroup_files.directory("memory", own, "memory.peak"), os.O_RDWR)
    except OSError:  # absent, or no write handler
        return False
    try:
        os.pwrite(fd, b"0", 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


async def assert_billed_exactly(db: asyncpg.Connection, ids: list[int]) -> dict[int, int]:
    """Check every job's rows against its totals; return the number of rows per job."""
    jobs = {
        r["id"]: r for r in await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1)", ids)
    }
    usage = await db.fetch(
        "SELECT * FROM scheduler.usage WHERE job_id = ANY($1) ORDER BY job_id, seq", ids
    )
    by_job: dict[int, list[asyncpg.Record]] = {i: [] for i in ids}
    for u in usage:
        by_job[u["job_id"]].append(u)
    counts = {}
    resets = kernel_resets_the_peak()
    for job_id, rows in by_job.items():
        job = jobs[job_id]
        assert rows, f"job {job_id} has no usage rows"
        assert [u["seq"] for u in rows] == list(range(1, len(rows) + 1)), job_id
        assert [u["final"] for u in rows] == [False] * (len(rows) - 1) + [True], job_id
        for before, after in itertools.pairwise(rows):
            assert after["period_start"] == before["period_end"], (job_id, after["seq"])
        assert sum(u["cpu_seconds"] for u in rows) == job["cpu_seconds"], job_id
        assert sum(u["io_read_bytes"] for u in rows) == job["io_read_bytes"], job_id
        assert sum(u["io_write_bytes"] for u in rows) == job["io_write_bytes"], job_id
        assert max(u["memory_peak_bytes"] for u in rows) == job["memory_peak_bytes"], job_id
        # Each row carries its own period's peak (the kernel's mark is reset at every
        # sweep), and every period is billed at least at that peak over its length. Where
        # the kernel cannot reset the mark (v2 before Linux 6.12) a period's peak is known
        # only when the lifetime peak rose in it, and only those periods are billed at it
        # (the others at the trapezoid of their end samples: accounting/periods.py).
        lifetime = 0
        for u in rows:
            length = Decimal((u["period_end"] - u["period_start"]) / timedelta(microseconds=1))
            if resets or u["memory_peak_bytes"] > lifetime:
                assert u["memory_byte_seconds"] >= u["memory_peak_bytes"] * length / 1_000_000
            lifetime = max(lifetime, u["memory_peak_bytes"])
        assert rows[-1]["period_end"] >= job["finished_at"]
        assert all(u["memory_byte_seconds"] >= 0 for u in rows)
        counts[job_id] = len(rows)
    return counts


async def test_hundreds_of_short_and_long_jobs_add_up_exactly(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, **FAST)
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        short = [
            r["id"]
            for r in await db.fetch(
                "INSERT INTO scheduler.jobs (argv) SELECT CASE WHEN g % 2 = 0 THEN ARRAY['true']"
                " ELSE ARRAY['sleep', '0.005'] END FROM generate_series(1, 300) g RETURNING id"
            )
        ]
        long = [
            await submit(
                db, ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1.5"]
            )
            for _ in range(6)
        ]
        oom = await submit(
            db,
            ["sh", "-c", "sleep 0.5; head -c 200M /dev/zero | tail > /dev/null"],
            memory_bytes=32 * 1024 * 1024,
        )
        timed_out = await submit(db, ["sleep", "30"], timeout_seconds=Decimal("0.9"))
        killed = await submit(db, ["sleep", "30"])
        # Behind 300 short jobs that admission runs two at a time (cpu = 1 each, 2 cores).
        await wait_state(db, killed, "running", timeout=90)
        await anyio.sleep(0.8)
        cgroup_files.kill_file(cgroup_root, "default", f"job-{killed}").write_text("1")
        ids = [*short, *long, oom, timed_out, killed]
        rows = {r["id"]: r for r in await wait_final(db, ids, timeout=90)}
        tg.cancel_scope.cancel()
    assert {rows[i]["state"] for i in [*short, *long]} == {"succeeded"}
    assert rows[oom]["oom_killed"] is True
    assert rows[timed_out]["state"] == "timed_out"
    assert (rows[killed]["state"], rows[killed]["signal"]) == ("failed", 9)
    counts = await assert_billed_exactly(db, ids)
    # Long jobs span several sweeps; the kernel's counters still add up to the nanosecond.
    assert all(counts[i] >= 4 for i in long), [counts[i] for i in long]
    assert all(counts[i] >= 3 for i in (timed_out, killed, oom))
    assert all(rows[i]["cpu_seconds"] > 0 for i in ids)


async def test_frozen_time_accrues_memory_but_no_cpu(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, **FAST)
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        job = await submit(
            db,
            ["sh", "-c", "while :; do :; done"],
            timeout_seconds=Decimal("3"),
            cpu=Decimal("0.5"),
        )
        await wait_state(db, job, "running")
        await anyio.sleep(0.5)
        driver = open_driver(cgroup_root)
        cgroup = CgroupPath(("default", f"job-{job}"))
        driver.freeze(cgroup)
        frozen_from = datetime.now(UTC)
        await anyio.sleep(1.2)
        frozen_to = datetime.now(UTC)
        driver.thaw(cgroup)
        await wait_final(db, [job])
        tg.cancel_scope.cancel()
    await assert_billed_exactly(db, [job])
    usage = await db.fetch("SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", job)
    inside = [u for u in usage if u["period_start"] >= frozen_from and u["period_end"] <= frozen_to]
    assert len(inside) >= 3
    assert all(u["cpu_seconds"] == 0 for u in inside)
    assert all(u["memory_byte_seconds"] > 0 for u in inside)
    assert sum(u["cpu_seconds"] for u in usage) > Decimal("0.2")


async def test_a_restart_continues_from_the_last_committed_period(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, **FAST)
    async with anyio.create_task_group() as tg:
        first = await start_agent(tg, settings)
        running = await submit(db, ["sh", "-c", "sleep 2.5; exit 0"])
        ends_away = await submit(db, ["sleep", "1.2"])
        await wait_state(db, running, "running")
        await anyio.sleep(0.9)
        first.stop()
    before = await db.fetch("SELECT job_id, seq FROM scheduler.usage ORDER BY job_id, seq")
    assert len(before) >= 4  # both jobs were sampled before the stop
    await anyio.sleep(0.6)  # ends_away finishes while no agent runs
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        rows = {r["id"]: r for r in await wait_final(db, [running, ends_away])}
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < slow(30)
    assert {r["state"] for r in rows.values()} == {"succeeded"}
    counts = await assert_billed_exactly(db, [running, ends_away])
    assert counts[running] > sum(1 for b in before if b["job_id"] == running)


async def test_a_retried_attempt_continues_the_jobs_numbering(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, **FAST)
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        job = await submit(db, ["sh", "-c", "sleep 0.5; exit 3"], max_attempts=2)
        [row] = await wait_final(db, [job], timeout=30)
        tg.cancel_scope.cancel()
    assert (row["state"], row["attempts"]) == ("failed", 2)
    usage = await db.fetch("SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", job)
    assert [u["seq"] for u in usage] == list(range(1, len(usage) + 1))
    for attempt in (1, 2):
        mine = [u for u in usage if u["attempt"] == attempt]
        assert len(mine) >= 2
        assert [u["final"] for u in mine] == [False] * (len(mine) - 1) + [True]
        for before, after in itertools.pairwise(mine):
            assert after["period_start"] == before["period_end"]
    last = [u for u in usage if u["attempt"] == 2]
    assert sum(u["cpu_seconds"] for u in last) == row["cpu_seconds"]
