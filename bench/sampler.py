"""Sampler benchmark: one sweep over 1,000 running (sleeping) jobs, the final read at exit,
and usage rows written per second.

Sets up, without an agent, N job cgroups under a private root, each holding one `sleep`,
and N job rows in a private Postgres; then measures:
  - re-reading every cgroup's kept-open counter files with pread (what a sweep does), per
    cgroup, against opening and reading them afresh (the drivers' read_usage);
  - a whole sweep of the real Sampler (read all, one INSERT of N rows, snapshot);
  - the final read at exit (an emptied cgroup), per cgroup, as the runner does it;
  - usage rows written per second through the sweep's batched statement.
Usage: python bench/sampler.py [--jobs 1000] [--sweeps 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import SCRATCH, describe, remove_scratch
from scheduler.accounting.periods import advance
from scheduler.agent.sampler import Sampler, counters_of
from scheduler.cgroups.base import CgroupPath, Limits
from scheduler.cgroups.counters import CounterReader, counter_files, read_final
from scheduler.cgroups.detect import open_driver
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate
from scheduler.db.pool import connect, create_pool
from scheduler.jobs import Job
from scheduler.runtime.output import OutputMeter


def place(procs: tuple[str, ...], mkdirs: tuple[str, ...]) -> subprocess.Popen[bytes]:
    for d in mkdirs:
        os.makedirs(d, exist_ok=True)
    proc = subprocess.Popen(["sleep", "3600"])
    for file in procs:
        with open(file, "w") as f:
            f.write(str(proc.pid))
    return proc


def per_cgroup_us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


async def main(n: int, sweeps: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="sched-bench-", dir=SCRATCH))
    os.chmod(base, 0o755)
    root = f"sched-bench-{uuid.uuid4().hex[:8]}"
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    driver = open_driver(root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conn = await connect(pg.dsn)
        await migrate(conn)
        rows = await conn.fetch(
            "INSERT INTO scheduler.jobs (argv) SELECT ARRAY['sleep', '3600'] "
            "FROM generate_series(1, $1) RETURNING *",
            n,
        )
        # As a claim would: running, attempt 1.
        await conn.execute(
            "UPDATE scheduler.jobs SET state = 'running', attempts = 1, node = 'bench',"
            " started_at = now()"
        )
        rows = await conn.fetch("SELECT * FROM scheduler.jobs ORDER BY id")
        jobs = [Job.from_row(r) for r in rows]
        driver.ensure(CgroupPath(()), Limits())
        driver.ensure(CgroupPath(("default",)), Limits())
        cgroups = [CgroupPath.for_job(("default",), j.id) for j in jobs]
        plans = [driver.plan(c, Limits()) for c in cgroups]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            procs = list(pool.map(lambda p: place(p.procs, p.mkdirs), plans))
        setup = time.perf_counter() - t0

        # Kept-open files, re-read with pread (the sweep's read), against open-and-read. As
        # the sampler does: each read followed by the reset of the memory peak, and the job's
        # kept output measured (a stdout file, no stderr: one fstat, one failed open).
        outputs = Path(tempfile.mkdtemp(prefix="sched-bench-out-", dir="/var/tmp"))
        (outputs / "stdout").write_bytes(b"x" * 100)
        t0 = time.perf_counter()
        readers = [CounterReader(counter_files(driver, c), reset_peak=True) for c in cgroups]
        meters = [OutputMeter(outputs, None) for _ in cgroups]
        open_cost = time.perf_counter() - t0
        files = readers[0].open_files
        resets = readers[0].resets_peak
        reread = []
        for _ in range(sweeps):
            t0 = time.perf_counter()
            for r, m in zip(readers, meters, strict=True):
                r.read()
                r.reset_peak()
                m.kept()
            reread.append(time.perf_counter() - t0)
        for m in meters:
            m.close()
        fresh = []
        for _ in range(3):
            t0 = time.perf_counter()
            for c in cgroups:
                driver.read_usage(c)
            fresh.append(time.perf_counter() - t0)
        for r in readers:
            r.close()

        # Whole sweeps of the real sampler: read all, one INSERT of n rows, snapshot.
        db_pool = await create_pool(pg.dsn, min_size=2, max_size=4)
        sampler = Sampler(db_pool, driver, node="bench", interval=10)
        now = time.time_ns()
        for job, cgroup in zip(jobs, cgroups, strict=True):
            sampler.register(job, cgroup, now, OutputMeter(outputs, None))
        t0 = time.perf_counter()
        await sampler.sweep()  # opens every cgroup's files
        first_sweep = time.perf_counter() - t0
        whole = []
        for _ in range(sweeps):
            await anyio.sleep(0.05)
            t0 = time.perf_counter()
            written = await sampler.sweep()
            whole.append(time.perf_counter() - t0)
            assert written == n, written

        # Rows per second through the sweep's statement alone (20 batches of n rows).
        attempts = list(sampler._attempts.values())
        marks = [a.mark for a in attempts]
        samples = [a.last for a in attempts]
        batches = []
        at = time.time_ns()
        for _ in range(20):
            at += 1_000_000
            batch = []
            for i, a in enumerate(attempts):
                mark, sample = marks[i], samples[i]
                assert mark is not None and sample is not None
                period, marks[i] = advance(
                    mark, at_ns=at, counters=counters_of(sample), memory_bytes=0
                )
                batch.append((a, period))
            batches.append(batch)
        t0 = time.perf_counter()
        for batch in batches:
            await sampler._write(batch)
        write_rate = 20 * n / (time.perf_counter() - t0)
        total_rows = await conn.fetchval("SELECT count(*) FROM scheduler.usage")
        assert total_rows == (sweeps + 1) * n + 20 * n, total_rows

        # The final read at exit, once the cgroup is empty: through the sampler's kept-open
        # files (an attempt it sampled), or opening the few billed files once (one it did not).
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()
        await anyio.sleep(1.0)  # let the kernel finish tearing the processes down
        closed = [await sampler.close(j) for j in jobs]

        def timed(read: object) -> float:
            passes = []
            for _ in range(3):
                t0 = time.perf_counter()
                for i, c in enumerate(cgroups):
                    read(i, c)  # type: ignore[operator]
                passes.append(time.perf_counter() - t0)
            return statistics.median(passes)

        final_kept = timed(lambda i, c: read_final(driver, c, closed[i].reader))
        final = timed(lambda i, c: read_final(driver, c, None))
        final_driver = timed(lambda i, c: driver.read_usage(c))
        for done in closed:
            if done.reader is not None:
                done.reader.close()
        await db_pool.close()
        await conn.close()
        shutil.rmtree(outputs, ignore_errors=True)

        print(describe())
        print(f"{n} job cgroups (driver {driver.name}), one sleep each; set up in {setup:.1f} s")
        print(
            f"sweep read, kept-open files re-read with pread ({files} files per cgroup), "
            f"memory peak reset (kernel allows it: {resets}) and kept output measured: "
            f"median {per_cgroup_us(statistics.median(reread), n):.1f} us per cgroup "
            f"({statistics.median(reread) * 1000:.1f} ms per sweep; target <= 50 us)"
        )
        print(
            f"  opening the files once: {per_cgroup_us(open_cost, n):.1f} us per cgroup; "
            f"open-and-read afresh (read_usage): "
            f"{per_cgroup_us(statistics.median(fresh), n):.1f} us per cgroup"
        )
        print(
            f"whole sampler sweep (read {n} cgroups, INSERT {n} rows, snapshot): median "
            f"{statistics.median(whole) * 1000:.1f} ms, max {max(whole) * 1000:.1f} ms "
            f"({n / statistics.median(whole):.0f} rows/s); first sweep with opens "
            f"{first_sweep * 1000:.1f} ms"
        )
        print(
            f"final read at exit (emptied cgroup): {per_cgroup_us(final, n):.1f} us per cgroup "
            f"opening the billed files once, {per_cgroup_us(final_kept, n):.1f} us through "
            f"the sampler's kept-open files (target <= 150 us); the driver's read_usage "
            f"(every file, opened by path) {per_cgroup_us(final_driver, n):.1f} us"
        )
        print(
            f"usage rows written through the batched statement: {write_rate:.0f} rows/s "
            f"(batches of {n}; target >= 20,000)"
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        driver.remove_tree(CgroupPath(()))
        await pg.stop()
        remove_scratch(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=10)
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.sweeps)
