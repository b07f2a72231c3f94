"""Launch speed, in one run: the bare kernel loop (the limit), the runtime alone, end to end.

Prints the machine and:
  - bare loop: bench/bare_loop.c (compiled here), per job a cgroup mkdir in the driver's
    hierarchies + clone(pid, mnt, uts, ipc, net) + fresh /proc + exec `true` + wait + read
    counters + rmdir; 8 in flight and one at a time;
  - runtime alone: the agent's launch path without Postgres (driver plan, the fork server
    forking a monitor with the default sandbox: a tenant uid, private /tmp, /var/tmp and
    /dev/shm, the job's own /sys/fs/cgroup, the seccomp filter; wait on the pidfd, the final
    counters from the monitor's exit record (the agent's own read if it has none), remove;
    the cgroup lock warmer poked per launch, as the agent does; the monitors' records on a
    tmpfs, output on the state disk, as deployed), 8 in flight;
  - end to end: `scheduler serve` in a child process, one INSERT ... SELECT of `true` jobs to
    every exit and usage row committed (each job asks for one core, the runtime alone's cpu
    limit; the agent's admission capacity is set to its max_running cores);
  each as jobs/s and as a ratio to the bare loop with 8 in flight (median of --repeat runs),
  every phase started once the machine is quiet (the kernel's teardown of the previous
  phase's namespaces and cgroups done);
  - agent CPU per job: utime+stime of the agent process over the end-to-end runs / jobs;
  - agent RSS with 500 sleeping jobs.
Usage: python bench/launch.py [--jobs 400] [--repeat 3] [--sleepers 500]
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

from bench.machine import SCRATCH, describe, remove_scratch, runtime_tmpfs, wait_quiet
from bench.spine import insert_true_jobs, start_agent, wait_finished
from scheduler.agent.sampler import final_usage
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.cgroups.counters import final_read, parse_sample
from scheduler.cgroups.detect import open_driver
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.jobs import FINAL_STATES as FINAL
from scheduler.runtime.cgroupview import CgroupView
from scheduler.runtime.forkserver import ForkServer
from scheduler.runtime.launcher import (
    monitor_binary,
    read_exit_record,
    remove_run_dir,
    wait_monitor,
    warmer_binary,
)
from scheduler.runtime.spec import Credentials, LaunchSpec
from scheduler.runtime.warmer import LockWarmer

HERE = Path(__file__).resolve().parent
INFLIGHT = 8
# The agent's defaults for a job (see migrations/0001_initial.sql).
JOB_LIMITS = Limits(cpu_cores=1.0, memory_bytes=512 * 1024 * 1024, pids_max=1024)
TARGETS = {"runtime alone": 0.70, "end to end": 0.60}


def build_bare_loop(base: Path) -> Path:
    binary = base / "bare_loop"
    subprocess.run(
        ["cc", "-std=gnu11", "-O2", "-o", str(binary), str(HERE / "bare_loop.c")], check=True
    )
    return binary


def bare_loop(binary: Path, parents: list[str], jobs: int, inflight: int) -> float:
    out = subprocess.run(
        [str(binary), str(jobs), str(inflight), *parents],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bare loop failed: {out.stderr}")
    n, seconds = out.stdout.split()
    return int(n) / float(seconds)


async def runtime_alone(
    driver: CgroupDriver,
    fork_server: ForkServer,
    warmer: LockWarmer,
    runs: Path,
    monitors: Path,
    tenant: str,
    jobs: int,
    first_id: int,
) -> float:
    ids = iter(range(first_id, first_id + jobs))
    cgroup_view = CgroupView()

    async def one(job_id: int) -> None:
        warmer.poke()  # as the dispatcher does on every claim
        path = CgroupPath.for_job((tenant,), job_id)
        plan = driver.plan(path, JOB_LIMITS)
        run_dir = monitors / f"{job_id}-1"
        # The agent's sandbox: a tenant uid, its own /sys/fs/cgroup, the seccomp filter.
        view, view_hide = cgroup_view.entries(plan.dirs)
        spec = LaunchSpec(
            job_id=job_id,
            attempt=1,
            argv=("true",),
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            hostname=f"job-{job_id}",
            run_dir=run_dir,
            output_dir=runs / f"{job_id}-1",
            plan=plan,
            credentials=Credentials(200000, 200000),
            final_read=final_read(driver, path),
            cgroup_view=view,
            cgroup_hide=view_hide,
        )
        # As the agent's runner does: the fork server forks the monitor.
        pid, pidfd = await fork_server.launch(spec)
        try:
            await wait_monitor(pid, pidfd)
        finally:
            os.close(pidfd)
        record = read_exit_record(run_dir)
        assert record is not None and record.exit_code == 0, record
        # As the agent: the monitor's final read, or (it could not) the agent's own.
        if record.counters is not None:
            parse_sample(driver, record.counters).usage()
        else:
            while driver.populated(path):
                await anyio.sleep(0.0005)
            await final_usage(driver, path, None)
        driver.remove(path)
        remove_run_dir(run_dir)  # as the agent's recorder does once the end is committed

    async def worker() -> None:
        for job_id in ids:
            await one(job_id)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(INFLIGHT):
            tg.start_soon(worker)
    return jobs / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def end_to_end(conn: asyncpg.Connection, jobs: int) -> float:
    t0 = time.perf_counter()
    # The runtime alone's cpu limit: the same CFS quota for the same `true` (0.01 cores
    # would throttle `true` itself, about 0.2 ms of CPU per job more; see main()).
    ids = await insert_true_jobs(conn, jobs, cpu=JOB_LIMITS.cpu_cores or 1.0)
    await wait_finished(conn, ids)
    elapsed = time.perf_counter() - t0
    final = await conn.fetchval(
        "SELECT count(*) FROM scheduler.usage WHERE job_id = ANY($1) AND final", ids
    )
    ok = await conn.fetchval(
        "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'succeeded'", ids
    )
    assert final == jobs and ok == jobs, (final, ok, jobs)
    return jobs / elapsed


async def sleepers_rss(
    conn: asyncpg.Connection, agent_pid: int, driver: CgroupDriver, runs: Path, n: int
) -> float:
    ids = [
        r["id"]
        for r in await conn.fetch(
            "INSERT INTO scheduler.jobs (argv, cpu, memory_bytes)"
            " SELECT ARRAY['sh', '-c', 'echo up; exec sleep 300'], 0.001, 4194304"
            " FROM generate_series(1, $1) RETURNING id",
            n,
        )
    ]
    with anyio.fail_after(300):
        while (
            sum(
                (runs / f"{i}-1" / "stdout").is_file()
                and (runs / f"{i}-1" / "stdout").stat().st_size
                for i in ids
            )
            < n
        ):
            await anyio.sleep(0.1)
    await anyio.sleep(1)  # let the agent settle (every job is in its supervise wait)
    rss = rss_mib(agent_pid)
    driver.kill(CgroupPath(("default",)))
    with anyio.fail_after(120):
        while (
            await conn.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = ANY($2)",
                ids,
                list(FINAL),
            )
            < n
        ):
            await anyio.sleep(0.1)
    return rss


def ratio_line(name: str, rate: float, bare: float) -> str:
    target = TARGETS.get(name)
    suffix = f" (target >= {target:.0%})" if target else ""
    return f"{name:<28} {rate:7.0f} jobs/s  {rate / bare:6.1%} of the bare loop{suffix}"


async def main(jobs: int, repeat: int, sleepers: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="sched-launch-", dir=SCRATCH))
    base.chmod(0o755)
    root = f"sched-launch-{uuid.uuid4().hex[:8]}"
    driver = open_driver(root)
    driver.ensure(CgroupPath(()), Limits())
    for tenant in ("bare", "alone"):
        driver.ensure(CgroupPath((tenant,)), Limits())
    pg = EmbeddedPostgres(base / "pg")
    agent = None
    warmer: LockWarmer | None = None
    fork_server: ForkServer | None = None
    try:
        binary = build_bare_loop(base)
        fork_server = ForkServer(monitor_binary(base / "bin"))
        fork_server.start()
        parents = [
            str(p.parent)
            for p in map(Path, driver.plan(CgroupPath(("bare", "job-0")), Limits()).dirs)
        ]
        runs = base / "alone-runs"
        monitors = runtime_tmpfs(base / "alone-run")
        warmer = await LockWarmer.start(
            warmer_binary(base / "bin"), driver.helper_dir("bench-warmer"), window=2.0
        )
        await pg.start()
        state = base / "state"
        # End-to-end jobs ask for one core each, as the runtime alone's do: the agent's
        # admission capacity is its max_running cores, so that cores do not cap the jobs in
        # flight at two (the node is overcommitted on purpose; `true` uses a fraction of a
        # millisecond of its core).
        max_running = sleepers + 50
        agent = start_agent(
            pg.dsn,
            state,
            root,
            extra={
                "SCHEDULER_MAX_RUNNING": str(max_running),
                "SCHEDULER_NODE_CPU": str(max_running),
            },
        )
        conn = await asyncpg.connect(pg.dsn)
        # Warm up every path once (monitor compiled, tenant cgroups made, caches hot).
        bare_loop(binary, parents, 50, INFLIGHT)
        await runtime_alone(driver, fork_server, warmer, runs, monitors, "alone", 50, 1)
        await end_to_end(conn, 50)
        results: dict[str, list[float]] = {
            k: []
            for k in (
                "bare loop, 8 in flight",
                "bare loop, sequential",
                "runtime alone",
                "end to end",
            )
        }
        cpu = 0.0
        next_id = 1000
        for _ in range(repeat):
            # Each phase starts on a quiet machine: the kernel tears the previous phase's
            # namespaces and cgroups down after their jobs ended (see machine.wait_quiet).
            wait_quiet()
            results["bare loop, 8 in flight"].append(bare_loop(binary, parents, jobs, INFLIGHT))
            wait_quiet()
            results["bare loop, sequential"].append(bare_loop(binary, parents, jobs // 2, 1))
            wait_quiet()
            results["runtime alone"].append(
                await runtime_alone(
                    driver, fork_server, warmer, runs, monitors, "alone", jobs, next_id
                )
            )
            next_id += jobs
            wait_quiet()
            before = cpu_seconds(agent.pid)
            results["end to end"].append(await end_to_end(conn, jobs))
            cpu += cpu_seconds(agent.pid) - before
        rss_idle = rss_mib(agent.pid)
        rss = await sleepers_rss(conn, agent.pid, driver, state / "runs", sleepers)
        await conn.close()
        med = {k: statistics.median(v) for k, v in results.items()}
        bare = med["bare loop, 8 in flight"]
        print(describe())
        print(f"{jobs} `true` jobs per run, median of {repeat} runs (all runs: jobs/s)")
        for name, rate in med.items():
            runs_text = ", ".join(f"{r:.0f}" for r in results[name])
            print(f"{ratio_line(name, rate, bare)}   [{runs_text}]")
        # Each run against the bare loop of its own round (minutes apart at most): the host's
        # drift between rounds cancels out of these.
        for name in TARGETS:
            bares = results["bare loop, 8 in flight"]
            paired = [r / b for r, b in zip(results[name], bares, strict=True)]
            paired_text = ", ".join(f"{p:.1%}" for p in paired)
            print(
                f"{name}, each run / its round's bare loop: median"
                f" {statistics.median(paired):.1%}   [{paired_text}]"
            )
        per_job_ms = cpu / (jobs * repeat) * 1000
        print(f"agent CPU per job (end to end): {per_job_ms:.2f} ms (target <= 1.6 ms)")
        print(f"agent RSS: {rss_idle:.0f} MiB idle, {rss:.0f} MiB with {sleepers} sleeping jobs")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        if warmer is not None:
            await warmer.aclose()
        if fork_server is not None:
            fork_server.close()
        driver.remove_tree(CgroupPath(()))
        await pg.stop()
        remove_scratch(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sleepers", type=int, default=500)
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.repeat, args.sleepers)
