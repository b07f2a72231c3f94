"""The sampler on its own, against a real cgroup and Postgres: a retried write, a write whose
outcome is unknown, and closing never bill a period twice or leave a gap."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Iterator

import asyncpg
import pytest

from scheduler.accounting.periods import Period, close
from scheduler.agent.sampler import Sampler, _Attempt, counters_of
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.cgroups.counters import read_final
from scheduler.cgroups.detect import open_driver
from scheduler.db.pool import create_pool
from scheduler.jobs import Job

pytestmark = pytest.mark.anyio


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
    pool = await create_pool(dsn, min_size=1, max_size=2)
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
