"""Benchmarks against peers, in one run on this machine: trivial jobs/s and start latency.

  (b) the limit: bench/bare_loop.c (bench/launch.py builds and runs it), the kernel work of
      one isolated job (cgroup mkdir + clone into pid/mount/uts/ipc/net namespaces + fresh
      /proc + exec `true` + wait + read counters + rmdir), 8 in flight and one at a time;
  (a) this project end to end (bench/spine.py): `scheduler serve` in a child process on a
      private Postgres; throughput of `true` jobs from one INSERT ... SELECT to all recorded,
      latency insert -> process started (submitted_at -> started_at), one job at a time;
  (c) a Postgres queue without isolation (bench/queue_peer.py: pgqueuer, a worker running
      `true` through asyncio's subprocess), on its own private Postgres, measured the same way;
  (d) Slurm from Debian's packages, one node here with proctrack/cgroup and task/cgroup
      (bench/slurm_peer.py), with its defaults and with batch_sched_delay=0; skipped, with
      the reason, when it is not installed or does not start;
  (e) three agents on one Postgres against one agent (bench/fleet.py), total throughput.
Prints the machine, every figure, and the ratios to (b) and to (a).
Usage: python bench/peers.py [--jobs 200] [--latency-jobs 100] [--fleet-jobs 600] [--no-slurm]
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fleet, launch, slurm_peer, spine
from bench.machine import describe
from scheduler.cgroups.base import CgroupPath, Limits
from scheduler.cgroups.detect import open_driver
from scheduler.db.embedded import EmbeddedPostgres

try:
    from bench import queue_peer
except ImportError as exc:  # pgqueuer is the optional extra `bench`
    queue_peer = None  # type: ignore[assignment]
    QUEUE_MISSING = f"pgqueuer not installed ({exc}): pip install -e '.[bench]'"
else:
    QUEUE_MISSING = ""


@dataclass(frozen=True)
class Figure:
    name: str
    rate: float | None = None  # jobs/s
    latency: list[float] | None = None  # ms
    skipped: str = ""


def say(line: str) -> None:
    print(line, flush=True)


def bare(base: Path, tag: str, jobs: int) -> tuple[Figure, Figure]:
    """(b): 8 in flight and one at a time, median of 3 runs each."""
    driver = open_driver(f"{tag}-bare")
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(CgroupPath(("bare",)), Limits())
    try:
        binary = launch.build_bare_loop(base)
        parents = [
            str(Path(p).parent) for p in driver.plan(CgroupPath(("bare", "job-0")), Limits()).dirs
        ]
        launch.bare_loop(binary, parents, 50, launch.INFLIGHT)  # warm up
        many = [launch.bare_loop(binary, parents, jobs, launch.INFLIGHT) for _ in range(3)]
        one = [launch.bare_loop(binary, parents, jobs // 2, 1) for _ in range(3)]
    finally:
        driver.remove_tree(CgroupPath(()))
    return (
        Figure("(b) bare C loop, 8 in flight", statistics.median(many)),
        Figure("(b) bare C loop, one at a time", statistics.median(one)),
    )


async def this_project(base: Path, tag: str, jobs: int, lat_jobs: int) -> Figure:
    """(a): spine.py's latency and throughput against one agent."""
    pg = EmbeddedPostgres(base / "pg-a")
    await pg.start()
    agent = None
    root = f"{tag}-a"
    try:
        agent = spine.start_agent(pg.dsn, base / "state-a", root)
        conn = await asyncpg.connect(pg.dsn)
        await spine.latency(conn, 20)  # warm up, as spine.py does
        lat = await spine.latency(conn, lat_jobs)
        rate = await spine.throughput(conn, jobs)
        await conn.close()
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        open_driver(root).remove_tree(CgroupPath(()))
        await pg.stop()
    return Figure("(a) this project, end to end", rate, lat)


async def queue(base: Path, jobs: int, lat_jobs: int) -> Figure:
    """(c): pgqueuer on its own private Postgres."""
    name = "(c) pgqueuer, `true` via subprocess"
    if queue_peer is None:
        return Figure(name, skipped=QUEUE_MISSING)
    pg = EmbeddedPostgres(base / "pg-c")
    await pg.start()
    worker = None
    try:
        await queue_peer.install(pg.dsn)
        worker = queue_peer.start_worker(pg.dsn)
        conn = await asyncpg.connect(pg.dsn)
        await queue_peer.warm_up(conn)
        lat = await queue_peer.latency(conn, lat_jobs)
        rate = await queue_peer.throughput(conn, jobs)
        await conn.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        await pg.stop()
    return Figure(name, rate, lat)


def slurm(jobs: int, lat_jobs: int) -> list[Figure]:
    """(d): Debian's defaults (latency over fewer jobs: about 3 s each), then tuned."""
    reason = slurm_peer.missing()
    if reason:
        return [Figure("(d) Slurm", skipped=reason)]
    version = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, check=False)
    label = f"(d) {version.stdout.strip() or 'Slurm'}"
    figures = []
    for params, n_lat, note in (
        ("", max(5, lat_jobs // 5), "defaults"),
        ("batch_sched_delay=0", lat_jobs, "batch_sched_delay=0"),
    ):
        try:
            with slurm_peer.SlurmNode.running(params) as node:
                lat = slurm_peer.latency(node, n_lat)
                rate = slurm_peer.throughput(node, jobs)
            figures.append(Figure(f"{label}, {note}", rate, lat))
        except (RuntimeError, TimeoutError, AssertionError, OSError) as exc:
            traceback.print_exc()
            figures.append(Figure(f"{label}, {note}", skipped=f"failed: {exc}"))
    return figures


async def agents(base: Path, tag: str, n: int, count: int, rounds: int) -> list[str]:
    """(e): one database, `count` agents against one; the summary lines."""
    pg = EmbeddedPostgres(base / "pg-e")
    await pg.start()
    group = fleet.Fleet(pg.dsn, base, f"{tag}-e")
    try:
        conn = await asyncpg.connect(pg.dsn)
        one, many = await fleet.compare(group, conn, count, n, rounds, say)
        await conn.close()
    finally:
        group.close()
        await pg.stop()
    r1 = statistics.median(r.rate for r in one)
    rn = statistics.median(r.rate for r in many)
    busy1 = statistics.median(r.busy for r in one)
    busyn = statistics.median(r.busy for r in many)
    cpu1 = statistics.median(r.agent_ms for r in one)
    cpun = statistics.median(r.agent_ms for r in many)
    split = ", ".join(f"{k} {v}" for k, v in many[-1].per_node.items())
    return [
        f"(e) {n} `true` jobs from one INSERT ... SELECT, median of {rounds} rounds:",
        f"    1 agent:  {r1:6.0f} jobs/s, host CPU busy {busy1:.0%}, agent CPU {cpu1:.2f} ms/job",
        f"    {count} agents: {rn:6.0f} jobs/s, host CPU busy {busyn:.0%}, "
        f"agents' CPU {cpun:.2f} ms/job (last round: {split})",
        f"    {count} agents / 1 agent: {rn / r1:.2f}x",
    ]


def row(fig: Figure, limit: float, ours: Figure, floor_ms: float) -> str:
    if fig.skipped:
        return f"{fig.name:<44} skipped: {fig.skipped}"
    assert fig.rate is not None
    text = f"{fig.name:<44} {fig.rate:7.1f} jobs/s {fig.rate / limit:7.1%} of (b)"
    if ours.rate and fig is not ours:
        text += f" {fig.rate / ours.rate:6.2f}x (a)"
    if fig.latency:
        p50 = statistics.median(fig.latency)
        p99 = spine.percentile(fig.latency, 0.99)
        text += f" | start p50 {p50:8.2f} ms p99 {p99:8.2f} ms ({len(fig.latency)} jobs)"
        text += f" p50 {p50 / floor_ms:6.1f}x (b)'s whole job"
        if ours.latency and fig is not ours:
            text += f", {p50 / statistics.median(ours.latency):6.1f}x (a)"
    return text


async def main(args: argparse.Namespace) -> None:
    base = spine.make_base()
    tag = f"peers-{uuid.uuid4().hex[:8]}"
    try:
        say(describe())
        say(
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; one run; on a shared "
            "host the absolute figures are noisy, compare the ratios within this run"
        )
        say("(b) bare C loop ...")
        limit, seq = bare(base, tag, args.jobs)
        say("(a) this project ...")
        ours = await this_project(base, tag, args.jobs, args.latency_jobs)
        say("(c) pgqueuer ...")
        peer = await queue(base, args.jobs, args.latency_jobs)
        figures = [limit, seq, ours, peer]
        if args.no_slurm:
            figures.append(Figure("(d) Slurm", skipped="--no-slurm"))
        else:
            say("(d) Slurm ...")
            figures.extend(slurm(args.jobs, args.latency_jobs))
        say(f"(e) 1 agent against {args.agents} on one Postgres ...")
        fleet_lines = await agents(base, tag, args.fleet_jobs, args.agents, args.rounds)
        assert limit.rate and seq.rate
        floor_ms = 1000 / seq.rate
        say(
            f"\n{args.jobs} `true` jobs per throughput run; (b)'s whole job one at a time "
            f"(mkdir .. exec .. rmdir) takes {floor_ms:.2f} ms, the floor for a start latency"
        )
        for fig in figures:
            say(row(fig, limit.rate, ours, floor_ms))
        for line in fleet_lines:
            say(line)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--fleet-jobs", type=int, default=600)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-slurm", action="store_true")
    anyio.run(main, parser.parse_args())
