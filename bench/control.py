"""Control benchmark: how fast a freeze requested in SQL reaches the kernel.

Runs a real agent (`scheduler serve` in a child process) against a private Postgres, with a
cgroup root of its own, and 100 `sleep` jobs running. Prints the machine and:
  - job freeze: for each of the jobs in turn, the time from sending
    `UPDATE scheduler.jobs SET desired_state = 'frozen'` (autocommit) to the kernel reporting
    the job's cgroup frozen (v1 freezer.state FROZEN, v2 cgroup.events frozen 1), and to the
    state column saying 'frozen'; p50 and p99;
  - tenant freeze: a tenant with 100 running jobs, from `UPDATE scheduler.tenants SET
    frozen = true` to the kernel reporting the tenant's cgroup frozen (which it does only once
    every job below is), and to all 100 state columns saying 'frozen'; and the driver's own
    freeze of that tenant cgroup (one write, confirmed), measured in-process.
Usage: python bench/control.py [--jobs 100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import spine
from bench.machine import describe, remove_scratch
from bench.spine import make_base, percentile
from scheduler.cgroups.base import CgroupDriver, CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.cgroups.v1 import V1Driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.jobs import FINAL_STATES as FINAL


def start_agent(dsn: str, state: Path, root: str) -> subprocess.Popen[str]:
    # 100 sleeping jobs of 0.01 core each fit any node; keep admission out of the way.
    return spine.start_agent(dsn, state, root, {"SCHEDULER_NODE_CPU": "64"})


def frozen_in_kernel(driver: CgroupDriver, path: CgroupPath) -> bool:
    """What the kernel says, read directly (not through the agent)."""
    if isinstance(driver, V1Driver) and "freezer" in driver.controllers:
        state = driver.directory("freezer", path) / "freezer.state"
        return state.read_text().strip() == "FROZEN"
    if isinstance(driver, V1Driver):
        events = driver.directory("unified", path) / "cgroup.events"
    else:
        assert isinstance(driver, V2Driver)
        events = driver.directory(path) / "cgroup.events"
    return "frozen 1" in events.read_text()


async def wait_for(predicate: object, timeout: float = 10.0) -> float:
    """Poll ``predicate`` every 0.2 ms; return the perf_counter time it first held."""
    assert callable(predicate)
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached")
        await anyio.sleep(0.0002)


async def start_jobs(conn: asyncpg.Connection, tenant: str, n: int) -> list[int]:
    ids = [
        r["id"]
        for r in await conn.fetch(
            "INSERT INTO scheduler.jobs (tenant, argv, cpu, memory_bytes)"
            " SELECT $1, ARRAY['sleep', '600'], 0.01, 16777216 FROM generate_series(1, $2)"
            " RETURNING id",
            tenant,
            n,
        )
    ]
    with anyio.fail_after(120):
        while (
            await conn.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'running'", ids
            )
            < n
        ):
            await anyio.sleep(0.05)
    await anyio.sleep(1.0)  # every monitor has put its job into the cgroup
    return ids


async def job_freeze(
    conn: asyncpg.Connection, driver: CgroupDriver, ids: list[int]
) -> tuple[list[float], list[float]]:
    kernel, column = [], []
    for job_id in ids:
        path = CgroupPath(("default", f"job-{job_id}"))
        t0 = time.perf_counter()
        await conn.execute(
            "UPDATE scheduler.jobs SET desired_state = 'frozen' WHERE id = $1", job_id
        )
        t_kernel = await wait_for(lambda p=path: frozen_in_kernel(driver, p))
        while (
            await conn.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id)
            != "frozen"
        ):
            await anyio.sleep(0.0002)
        t_column = time.perf_counter()
        kernel.append((t_kernel - t0) * 1000)
        column.append((t_column - t0) * 1000)
        await conn.execute(
            "UPDATE scheduler.jobs SET desired_state = 'running' WHERE id = $1", job_id
        )
        while await conn.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id) != (
            "running"
        ):
            await anyio.sleep(0.001)
    return kernel, column


async def tenant_freeze(
    conn: asyncpg.Connection, driver: CgroupDriver, ids: list[int], rounds: int
) -> tuple[list[float], list[float], list[float]]:
    tenant = CgroupPath(("bulk",))
    kernel, columns, direct = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await conn.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'bulk'")
        t_kernel = await wait_for(lambda: frozen_in_kernel(driver, tenant))
        while await conn.fetchval(
            "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'frozen'", ids
        ) < len(ids):
            await anyio.sleep(0.0005)
        t_columns = time.perf_counter()
        kernel.append((t_kernel - t0) * 1000)
        columns.append((t_columns - t0) * 1000)
        await conn.execute("UPDATE scheduler.tenants SET frozen = false WHERE name = 'bulk'")
        while await conn.fetchval(
            "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'running'", ids
        ) < len(ids):
            await anyio.sleep(0.001)
    # The driver's freeze alone (one write plus the confirmation), outside the agent's view.
    for _ in range(rounds):
        t0 = time.perf_counter()
        driver.freeze(tenant)
        direct.append((time.perf_counter() - t0) * 1000)
        driver.thaw(tenant)
    return kernel, columns, direct


def summary(name: str, values: list[float], target: str = "") -> str:
    text = (
        f"{name}: p50 {statistics.median(values):.2f} ms, p99 {percentile(values, 0.99):.2f} ms"
        f" (n={len(values)})"
    )
    return f"{text} {target}".rstrip()


async def main(n: int, rounds: int) -> None:
    base = make_base()
    root = f"sched-bench-{uuid.uuid4().hex[:8]}"
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    agent = None
    driver = open_driver(root)
    try:
        agent = start_agent(pg.dsn, base / "state", root)
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("INSERT INTO scheduler.tenants (name) VALUES ('bulk')")
        ids = await start_jobs(conn, "default", n)
        await job_freeze(conn, driver, ids[:5])  # warm up
        job_kernel, job_column = await job_freeze(conn, driver, ids)
        bulk = await start_jobs(conn, "bulk", n)
        t_kernel, t_columns, t_direct = await tenant_freeze(conn, driver, bulk, rounds)
        await conn.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled'"
            " WHERE state IN ('running', 'frozen')"
        )
        with anyio.fail_after(120):
            while await conn.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE NOT state = ANY($1)", list(FINAL)
            ):
                await anyio.sleep(0.05)
        await conn.close()
        print(describe())
        print(f"cgroup driver: {driver.name}")
        print(
            summary(
                f"job freeze, UPDATE -> kernel frozen, {n} jobs", job_kernel, "(target p50 < 20 ms)"
            )
        )
        print(summary("job freeze, UPDATE -> state column 'frozen'", job_column))
        print(
            summary(
                f"tenant freeze ({n} running jobs), UPDATE -> kernel frozen",
                t_kernel,
                "(target < 50 ms)",
            )
        )
        print(summary(f"tenant freeze, UPDATE -> all {n} state columns 'frozen'", t_columns))
        print(summary("tenant freeze, driver.freeze alone (one write, confirmed)", t_direct))
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        driver.remove_tree(CgroupPath(()))
        await pg.stop()
        remove_scratch(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.rounds)
