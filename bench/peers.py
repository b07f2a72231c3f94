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
(b), (a) and (c) run side by side in --rounds rounds, in a different order each round, so a
busy neighbour hits them alike; throughput is the median of the rounds, latency pools them.
Prints the machine, every figure, and the ratios to (b) and to (a).
Usage: python bench/peers.py [--jobs 200] [--latency-jobs 100] [--fleet-jobs 600]
                             [--agents 3] [--rounds 5] [--no-slurm]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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
from bench.machine import describe, remove_scratch
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
QUEUE_NAME = "(c) pgqueuer, `true` via subprocess"


@dataclass(frozen=True)
class Figure:
    name: str
    rate: float | None = None  # jobs/s
    latency: list[float] | None = None  # ms
    skipped: str = ""


def say(line: str) -> None:
    print(line, flush=True)


class Contenders:
    """(b), (a) and (c) side by side, so that a noisy neighbour hits all three alike."""

    def __init__(self, base: Path, tag: str, stack: contextlib.AsyncExitStack) -> None:
        self.base, self.tag, self.stack = base, tag, stack
        self.ours: asyncpg.Connection | None = None
        self.queue: asyncpg.Connection | None = None

    async def start(self) -> None:
        # (b): a cgroup root of its own, a leaf per job under its tenant "bare".
        driver = open_driver(f"{self.tag}-bare")
        driver.ensure(CgroupPath(()), Limits())
        self.stack.callback(driver.remove_tree, CgroupPath(()))
        driver.ensure(CgroupPath(("bare",)), Limits())
        self.binary = launch.build_bare_loop(self.base)
        self.parents = [
            str(Path(p).parent) for p in driver.plan(CgroupPath(("bare", "job-0")), Limits()).dirs
        ]
        launch.bare_loop(self.binary, self.parents, 50, launch.INFLIGHT)  # warm up
        # (a): one agent on a private Postgres, as bench/spine.py runs it.
        pg = await self._postgres("pg-a")
        root = f"{self.tag}-a"
        self.stack.callback(open_driver(root).remove_tree, CgroupPath(()))
        agent = spine.start_agent(pg.dsn, self.base / "state-a", root)
        self.stack.callback(_stop, agent)
        self.ours = await self._connect(pg.dsn)
        await spine.latency(self.ours, 20)  # warm up, as spine.py does
        # (c): pgqueuer's worker on another private Postgres.
        if queue_peer is not None:
            pg = await self._postgres("pg-c")
            await queue_peer.install(pg.dsn)
            self.stack.callback(_stop, queue_peer.start_worker(pg.dsn))
            self.queue = await self._connect(pg.dsn)
            await queue_peer.warm_up(self.queue)

    async def _postgres(self, name: str) -> EmbeddedPostgres:
        pg = EmbeddedPostgres(self.base / name)
        await pg.start()
        self.stack.push_async_callback(pg.stop)
        return pg

    async def _connect(self, dsn: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        self.stack.push_async_callback(conn.close)
        return conn

    async def measure(self, jobs: int, lat_jobs: int, rounds: int) -> list[Figure]:
        assert self.ours is not None
        many, one, rate_a, rate_c = [], [], [], []
        lat_a: list[float] = []
        lat_c: list[float] = []
        per_round = max(1, lat_jobs // rounds)
        ours, queue = self.ours, self.queue

        async def limit() -> None:
            many.append(launch.bare_loop(self.binary, self.parents, jobs, launch.INFLIGHT))
            one.append(launch.bare_loop(self.binary, self.parents, jobs // 2, 1))

        async def project() -> None:
            lat_a.extend(await spine.latency(ours, per_round))
            rate_a.append(await spine.throughput(ours, jobs))

        async def peer() -> None:
            if queue is not None and queue_peer is not None:
                lat_c.extend(await queue_peer.latency(queue, per_round))
                rate_c.append(await queue_peer.throughput(queue, jobs))

        steps = [limit, project, peer]
        for r in range(rounds):
            # A different order each round: whatever one step leaves behind (cgroups being
            # freed, a busy neighbour) does not always land on the same contender.
            for step in steps[r % 3 :] + steps[: r % 3]:
                await step()
            say(
                f"  round {r + 1}: (b) {many[-1]:.0f}, (a) {rate_a[-1]:.0f}"
                + (f", (c) {rate_c[-1]:.0f}" if rate_c else "")
                + " jobs/s"
            )
        peer_figure = Figure(QUEUE_NAME, skipped=QUEUE_MISSING)
        if rate_c:
            peer_figure = Figure(QUEUE_NAME, statistics.median(rate_c), lat_c)
        return [
            Figure("(b) bare C loop, 8 in flight", statistics.median(many)),
            Figure("(b) bare C loop, one at a time", statistics.median(one)),
            Figure("(a) this project, end to end", statistics.median(rate_a), lat_a),
            peer_figure,
        ]


def _stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def slurm(jobs: int, lat_jobs: int) -> list[Figure]:
    """(d): Debian's defaults (latency over fewer jobs: about 3 s each), then tuned."""
    reason = slurm_peer.missing()
    if reason:
        return [Figure("(d) Slurm", skipped=reason)]
    version = subprocess.run(["slurmd", "-V"], capture_output=True, text=True, check=False)
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
        async with contextlib.AsyncExitStack() as stack:
            contenders = Contenders(base, tag, stack)
            say("(b), (a), (c): warming up ...")
            await contenders.start()
            figures = await contenders.measure(args.jobs, args.latency_jobs, args.rounds)
        limit, seq, ours = figures[:3]
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
        remove_scratch(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--fleet-jobs", type=int, default=600)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-slurm", action="store_true")
    anyio.run(main, parser.parse_args())
