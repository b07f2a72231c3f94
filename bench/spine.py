"""Spine benchmark: insert -> process started latency, and end-to-end throughput.

Runs a real agent (`scheduler serve` in a child process) against a private Postgres, with a
cgroup root of its own. Prints the machine and the figures:
  - latency: 200 `true` jobs (default resources) inserted one at a time on an idle system;
    the time from the insert (submitted_at, taken inside the inserting transaction) to the
    job's exec (started_at, recorded by the job's monitor), p50 and p99; once with the defaults (the
    cgroup lock kept warm while jobs arrive, runtime/warmer.py), once with the warmer off,
    and over 40 jobs each arriving after the warm window ran out;
  - throughput: 200 `true` jobs from one INSERT ... SELECT to all recorded (state and usage
    row committed), in jobs per second;
  - with the defaults, the CPU time the agent process and Postgres (every process of its
    cluster) spent per job, one at a time and in the throughput run: steadier than wall-clock
    figures on a shared host.
Usage: python bench/spine.py [--jobs 200] [--idle-jobs 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import SCRATCH, describe, remove_scratch, runtime_tmpfs
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.jobs import FINAL_STATES as FINAL


def start_agent(
    dsn: str, state: Path, root: str, extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = dict(
        os.environ,
        SCHEDULER_DATABASE_URL=dsn,
        SCHEDULER_STATE_DIR=str(state),
        # Monitors' records on a tmpfs, as in production (/run/scheduler): deploy/systemd.
        SCHEDULER_RUNTIME_DIR=str(runtime_tmpfs(state.with_name(f"{state.name}.run"))),
        SCHEDULER_CGROUP_ROOT=root,
        SCHEDULER_LOG_LEVEL="warning",
        SCHEDULER_HTTP_ADDR="127.0.0.1:0",
    )
    env.update(extra or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "serve"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready" in line:
            return proc
    raise RuntimeError("agent exited before it was ready")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latency(conn: asyncpg.Connection, n: int, gap: float = 0.01) -> list[float]:
    """Insert -> exec of ``n`` jobs inserted one at a time, ``gap`` seconds apart."""
    samples = []
    for _ in range(n):
        # Default resources (1 core): with cpu = 0.01 the kernel grants the job 1 ms per
        # 100 ms period, and its own pre-exec work (fork, exec) waits whole periods once
        # that is spent, which measures the quota, not the scheduler.
        job_id = await conn.fetchval(
            "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
        )
        # Woken by the agent's NOTIFY, not a tight poll: the harness takes no CPU from the
        # system it measures (the figure itself comes from the row's own timestamps).
        await wait_finished(conn, [job_id])
        row = await conn.fetchrow(
            "SELECT state, submitted_at, started_at FROM scheduler.jobs WHERE id = $1", job_id
        )
        assert row is not None and row["state"] == "succeeded", row
        samples.append((row["started_at"] - row["submitted_at"]).total_seconds() * 1000)
        await anyio.sleep(gap)  # idle system between jobs
    return samples


async def wait_finished(conn: asyncpg.Connection, ids: list[int], timeout: float = 300) -> None:
    """Return once every job of ``ids`` (one INSERT's, so one id range) has ended.

    Woken by the agent's ``scheduler_done`` NOTIFY (one per recorded batch), with a slow poll
    as a fallback: a tight poll of its own would take Postgres CPU from the system measured.
    Each look reads from the lowest job not yet seen ended to the first one still going (jobs
    end roughly in id order), not the whole range: the harness's own queries stay a few rows.
    """
    lo, hi = min(ids), max(ids)
    done = anyio.Event()

    def on_done(*_: object) -> None:
        done.set()

    await conn.add_listener("scheduler_done", on_done)
    try:
        with anyio.fail_after(timeout):
            while True:
                going = await conn.fetchval(
                    "SELECT min(id) FROM scheduler.jobs"
                    " WHERE id BETWEEN $1 AND $2 AND state <> ALL($3)",
                    lo,
                    hi,
                    list(FINAL),
                )
                if going is None:
                    return
                lo = going
                with anyio.move_on_after(0.05):
                    await done.wait()
                done = anyio.Event()
    finally:
        await conn.remove_listener("scheduler_done", on_done)


async def insert_true_jobs(conn: asyncpg.Connection, n: int, cpu: float = 0.01) -> list[int]:
    """``n`` trivial `true` jobs in one INSERT ... SELECT, asking for ``cpu`` cores each (by
    default 0.01, so that admission does not cap them at two on two cores); their ids."""
    rows = await conn.fetch(
        "INSERT INTO scheduler.jobs (argv, cpu, memory_bytes)"
        " SELECT ARRAY['true'], $2, 16777216 FROM generate_series(1, $1) RETURNING id",
        n,
        cpu,
    )
    return [int(r["id"]) for r in rows]


async def tear_down(
    agent: subprocess.Popen[str] | None, root: str, pg: EmbeddedPostgres, base: Path
) -> None:
    """Stop a benchmark's agent and Postgres; remove its cgroup tree and scratch directory."""
    if agent is not None:
        agent.terminate()
        agent.wait(timeout=30)
    open_driver(root).remove_tree(CgroupPath(()))
    await pg.stop()
    remove_scratch(base)


async def throughput(conn: asyncpg.Connection, n: int) -> float:
    t0 = time.perf_counter()
    ids = await insert_true_jobs(conn, n)
    await wait_finished(conn, ids)
    elapsed = time.perf_counter() - t0
    rows = await conn.fetchval(
        "SELECT count(*) FROM scheduler.usage WHERE job_id = ANY($1) AND final", ids
    )
    assert rows == n, f"{rows} final usage rows for {n} jobs"
    return n / elapsed


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_cpu_seconds(pg: EmbeddedPostgres) -> float:
    """CPU time of the postmaster and of every process it forked (backends, writers)."""
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == postmaster:
            total += cpu_seconds(int(entry))
    return total


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="sched-bench-", dir=SCRATCH))
    base.chmod(0o755)
    return base


def summary(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples):.2f} ms, p99 {percentile(samples, 0.99):.2f} ms"


async def main(n: int, idle_jobs: int) -> None:
    base = make_base()
    root = f"sched-bench-{uuid.uuid4().hex[:8]}"
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    agent = None
    try:
        conn = await asyncpg.connect(pg.dsn)
        # Three agents in turn on one database: the default (cgroup lock kept warm while
        # jobs arrive), the warmer off, and a short warm window with jobs spaced beyond it
        # (every launch is the first after an idle spell).
        phases = [
            ("lock warm (default)", {}, n, 0.01),
            ("warmer off", {"SCHEDULER_LAUNCH_WARM_SECONDS": "0"}, n, 0.01),
            ("first job after idle", {"SCHEDULER_LAUNCH_WARM_SECONDS": "0.1"}, idle_jobs, 0.3),
        ]
        results: list[tuple[str, list[float]]] = []
        rate = 0.0
        cpu: list[str] = []

        def cpu_now() -> tuple[float, float]:
            assert agent is not None
            return cpu_seconds(agent.pid), cluster_cpu_seconds(pg)

        def cpu_per_job(label: str, before: tuple[float, float], jobs: int) -> None:
            (agent0, pg0), (agent1, pg1) = before, cpu_now()
            cpu.append(
                f"CPU per job, {label}: agent {1000 * (agent1 - agent0) / jobs:.2f} ms,"
                f" Postgres {1000 * (pg1 - pg0) / jobs:.2f} ms"
            )

        for label, extra, count, gap in phases:
            agent = start_agent(pg.dsn, base / "state", root, extra)
            await latency(conn, 20)  # warm up: monitor compiled, tenant cgroup made, caches hot
            before = cpu_now()
            results.append((label, await latency(conn, count, gap)))
            if not extra:
                cpu_per_job("one at a time (and this harness's queries)", before, count)
                before = cpu_now()
                rate = await throughput(conn, n)
                cpu_per_job(f"{n} in one INSERT", before, n)
            agent.terminate()
            agent.wait(timeout=30)
            agent = None
        await conn.close()
        print(describe())
        for label, samples in results:
            print(f"insert -> started latency, {label}, {len(samples)} jobs: {summary(samples)}")
        print("(target p50 < 10 ms)")
        print(f"end-to-end throughput, {n} `true` jobs: {rate:.0f} jobs/s (target >= 100)")
        for line in cpu:
            print(line)
    finally:
        await tear_down(agent, root, pg, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--idle-jobs", type=int, default=40)
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.idle_jobs)
