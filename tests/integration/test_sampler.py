"""The sampler on its own, against a real cgroup and Postgres: a retried write, a write whose
outcome is unknown, and closing never bill a period twice or leave a gap."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from scheduler.accounting.periods import Period, close
from scheduler.agent.sampler import Sampler, _Attempt, counters_of
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.cgroups.counters import read_final
from scheduler.cgroups.detect import open_driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.db.pool import create_pool
from scheduler.jobs import Job
from tests.conftest import write_as_agent

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    # These tests stage job states by hand, as only the agent may write them.
    await write_as_agent(db)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def busy_cgroup(cgroup_root: str) -> Iterator[tuple[CgroupDriver, CgroupPath]]:
    """A job cgroup holding one process that burns a little cpu, then sleeps."""
    driver = open_driver(cgroup_root)
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(CgroupPath(("default",)), Limits())
    cgroup = CgroupPath(("default", "job-1"))
    plan = driver.plan(cgroup, Limits())
    for d in plan.mkdirs:
        os.makedirs(d, exist_ok=True)
    proc = subprocess.Popen(
        ["sh", "-c", "read x; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 30"],
        stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    for file in plan.procs:
        with open(file, "w") as f:
            f.write(str(proc.pid))
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    try:
        yield driver, cgroup
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


async def test_retries_and_unknown_outcomes_never_bill_twice(
    dsn: str, db: asyncpg.Connection, busy_cgroup: tuple[CgroupDriver, CgroupPath]
) -> None:
    driver, cgroup = busy_cgroup
    row = await db.fetchrow(
        "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['sleep', '30']) RETURNING *"
    )
    assert row is not None
    await db.execute(
        "UPDATE scheduler.jobs SET state = 'running', attempts = 1, node = 'n', "
        "started_at = now() WHERE id = $1",
        row["id"],
    )
    job = Job.from_row(await db.fetchrow("SELECT * FROM scheduler.jobs WHERE id = $1", row["id"]))
    pool = await create_pool(dsn, min_size=1, max_size=2, agent_writer=True)
    try:
        sampler = Sampler(pool, driver, node="n", interval=1)
        batches: list[list[tuple[_Attempt, Period]]] = []
        write = sampler._write

        async def recording(rows: list[tuple[_Attempt, Period]]) -> None:
            batches.append(rows)
            await write(rows)

        sampler._write = recording  # type: ignore[method-assign]
        sampler.register(job, cgroup, time.time_ns())
        assert await sampler.sweep() == 1
        attempt = sampler._attempts[job.id]
        assert attempt.mark is not None and attempt.mark.seq == 1
        # A retried write of the same rows (the commit's answer was lost) is a no-op.
        await write(batches[0])
        assert await db.fetchval("SELECT count(*) FROM scheduler.usage") == 1
        assert await sampler.sweep() == 1
        # The outcome of a write is unknown: the mark is dropped and reloaded from the rows.
        attempt.mark = None
        assert await sampler.sweep() == 1
        assert attempt.mark is not None and attempt.mark.seq == 3
        closed = await sampler.close(job)
        assert sampler.running == 0
        usage = read_final(driver, cgroup, closed.reader).usage()
        assert closed.reader is not None
        closed.reader.close()
        closing = close(
            closed.mark,
            exec_ns=0,
            end_ns=time.time_ns(),
            counters=counters_of(usage),
            memory_bytes=usage.memory_current_bytes,
        )
        rows = await db.fetch(
            "SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", job.id
        )
        assert [r["seq"] for r in rows] == [1, 2, 3]
        for before, after in itertools.pairwise(rows):
            assert after["period_start"] == before["period_end"]
        assert closing.start_ns == closed.mark.end_ns
        billed = sum(r["cpu_seconds"] for r in rows) + closing.cpu_seconds
        assert billed * 1_000_000_000 == usage.cpu_ns
    finally:
        await pool.close()


async def test_v2_sweeps_bill_the_deltas_of_captured_counters(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The v2 driver's files (a captured tree; counters rewritten between sweeps as the kernel
    would) through the real sampler and Postgres."""
    mount = tmp_path / "cgroup"
    shutil.copytree(FIXTURES / "cgroupv2", mount)
    driver = V2Driver(mount, "scheduler")
    cgroup = CgroupPath(("acme", "job-42"))
    leaf = mount / "scheduler" / "acme" / "job-42"
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    job_id = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('acme', ARRAY['x']) RETURNING id"
    )
    await db.execute(
        "UPDATE scheduler.jobs SET state = 'running', attempts = 1, node = 'n', "
        "started_at = now() WHERE id = $1",
        job_id,
    )
    job = Job.from_row(await db.fetchrow("SELECT * FROM scheduler.jobs WHERE id = $1", job_id))
    pool = await create_pool(dsn, min_size=1, max_size=2, agent_writer=True)
    try:
        sampler = Sampler(pool, driver, node="n", interval=1)
        sampler.register(job, cgroup, time.time_ns() - 1_000_000_000)
        assert await sampler.sweep() == 1
        # The sweep reset the peak through its open memory.peak (a write, as on Linux >= 6.12;
        # this regular file just keeps the "0" written over its first digit).
        assert (leaf / "memory.peak").read_text().startswith("0")
        (leaf / "cpu.stat").write_text(
            "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\n"
        )
        (leaf / "io.stat").write_text("259:0 rbytes=100000000 wbytes=314572800 rios=1 wios=1\n")
        (leaf / "memory.peak").write_text("300000000\n")
        assert await sampler.sweep() == 1
        closed = await sampler.close(job)
        (leaf / "cpu.stat").write_text(
            "usage_usec 5000001\nuser_usec 4000000\nsystem_usec 1000001\n"
        )
        usage = read_final(driver, cgroup, closed.reader).usage()
        assert closed.reader is not None
        closed.reader.close()
        closing = close(
            closed.mark,
            exec_ns=0,
            end_ns=time.time_ns(),
            counters=counters_of(usage),
            memory_bytes=usage.memory_current_bytes,
        )
    finally:
        await pool.close()
    rows = await db.fetch("SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", job_id)
    assert [r["cpu_seconds"] for r in rows] == [Decimal("4.395818"), Decimal("0.604182")]
    assert closing.cpu_ns == 1000
    assert [r["io_read_bytes"] for r in rows] == [1040384 + 90267648, 100000000 - 91308032]
    assert [r["memory_peak_bytes"] for r in rows] == [268402688, 300000000]
    assert rows[1]["period_start"] == rows[0]["period_end"]
    # memory.current stayed 187035648 at both sweeps, but the peak since the first sweep was
    # 300000000: the period is billed at its peak, exactly.
    seconds = (
        Decimal((rows[1]["period_end"] - rows[1]["period_start"]) / timedelta(microseconds=1))
        / 1_000_000
    )
    assert rows[1]["memory_byte_seconds"] == 300000000 * seconds


async def test_a_quiet_attempt_gets_no_zero_valued_rows(
    dsn: str, db: asyncpg.Connection, cgroup_root: str
) -> None:
    """An attempt whose processes survive the kill (agent/unkillable.py) is quiet: a period in
    which it used nothing writes no row, and the next row covers that time, without a gap."""
    driver = open_driver(cgroup_root)
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(CgroupPath(("default",)), Limits())
    cgroup = CgroupPath(("default", "job-1"))
    for d in driver.plan(cgroup, Limits()).mkdirs:
        os.makedirs(d, exist_ok=True)  # an empty cgroup: every period's usage is zero
    row = await db.fetchrow(
        "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['sleep', '30']) RETURNING *"
    )
    assert row is not None
    await db.execute(
        "UPDATE scheduler.jobs SET state = 'running', attempts = 1, node = 'n', "
        "started_at = now() WHERE id = $1",
        row["id"],
    )
    job = Job.from_row(await db.fetchrow("SELECT * FROM scheduler.jobs WHERE id = $1", row["id"]))
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        sampler = Sampler(pool, driver, node="n", interval=1)
        sampler.register(job, cgroup, time.time_ns())
        assert await sampler.sweep() == 1  # not quiet: a zero row, as before
        sampler.quiet(job.id)
        mark = sampler._attempts[job.id].mark
        assert await sampler.sweep() == 0
        assert await sampler.sweep() == 0
        assert sampler._attempts[job.id].mark == mark  # the time stays for the next row
        closed = await sampler.close(job)
        assert closed.mark == mark
        if closed.reader is not None:
            closed.reader.close()
        assert await db.fetchval("SELECT count(*) FROM scheduler.usage") == 1
        assert job.id not in sampler._quiet  # closing forgot it
    finally:
        await pool.close()
