"""Peer (e): several agents on one Postgres, total throughput against one agent.

Each agent is `scheduler serve` in a child process (bench/spine.py's launcher) with its own
node name, state directory and cgroup root, all on one database. A round measures one
agent alone, then the same jobs with every agent up, each from one INSERT ... SELECT to
all recorded. Beside each figure: the share of the host's CPU time that was busy during
it (/proc/stat: every process on the host, other engineers' included), which says whether
more agents had any CPU left to use, and the agents' own CPU time per job.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.launch import cpu_seconds
from bench.spine import insert_true_jobs, start_agent, wait_finished
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host, from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


@dataclass(frozen=True)
class Run:
    rate: float  # jobs/s
    busy: float  # share of the host's CPU time busy during the run (every process on it)
    agent_ms: float  # CPU time of the agents' own processes per job
    per_node: dict[str, int]


def agents_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def batch(conn: asyncpg.Connection, n: int, pids: list[int]) -> Run:
    """n `true` jobs in one INSERT ... SELECT to all recorded (as spine.throughput)."""
    busy0, total0 = cpu_times()
    cpu0 = agents_cpu(pids)
    t0 = time.perf_counter()
    ids = await insert_true_jobs(conn, n)
    await wait_finished(conn, ids)
    elapsed = time.perf_counter() - t0
    busy1, total1 = cpu_times()
    cpu1 = agents_cpu(pids)
    rows = await conn.fetch(
        "SELECT node, count(*) AS n, count(*) FILTER (WHERE state = 'succeeded') AS ok"
        " FROM scheduler.jobs WHERE id = ANY($1) GROUP BY node ORDER BY node",
        ids,
    )
    final = await conn.fetchval(
        "SELECT count(*) FROM scheduler.usage WHERE job_id = ANY($1) AND final", ids
    )
    assert sum(r["ok"] for r in rows) == n and final == n, (rows, final)
    return Run(
        rate=n / elapsed,
        busy=(busy1 - busy0) / max(1, total1 - total0),
        agent_ms=(cpu1 - cpu0) / n * 1000,
        per_node={r["node"]: r["n"] for r in rows},
    )


@dataclass
class Fleet:
    """Agents on one database; `start(i)` and `stop(i)` bring agent i up and down."""

    dsn: str
    base: Path
    tag: str
    agents: dict[int, subprocess.Popen[str]] = field(default_factory=dict)
    roots: set[str] = field(default_factory=set)

    def root(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def start(self, i: int) -> None:
        self.roots.add(self.root(i))
        self.agents[i] = start_agent(
            self.dsn,
            self.base / f"state-n{i}",
            self.root(i),
            {"SCHEDULER_NODE_NAME": f"peers-n{i}"},
        )

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.agents.values()]

    def stop(self, i: int) -> None:
        proc = self.agents.pop(i)
        proc.terminate()
        proc.wait(timeout=60)

    def close(self) -> None:
        for i in list(self.agents):
            self.stop(i)
        for root in self.roots:
            open_driver(root).remove_tree(CgroupPath(()))


async def compare(
    fleet: Fleet,
    conn: asyncpg.Connection,
    agents: int,
    n: int,
    rounds: int,
    progress: Callable[[str], None],
) -> tuple[list[Run], list[Run]]:
    """Per round: agent 1 alone, then agents 1..`agents`; the runs of each."""
    one: list[Run] = []
    many: list[Run] = []
    fleet.start(1)
    await batch(conn, 50, fleet.pids())  # warm up: monitor compiled, tenant cgroup made
    for r in range(rounds):
        one.append(await batch(conn, n, fleet.pids()))
        for i in range(2, agents + 1):
            fleet.start(i)
        await batch(conn, 50, fleet.pids())  # warm up the new agents
        many.append(await batch(conn, n, fleet.pids()))
        for i in range(2, agents + 1):
            fleet.stop(i)
        progress(
            f"  round {r + 1}: 1 agent {one[-1].rate:.0f} jobs/s, "
            f"{agents} agents {many[-1].rate:.0f} jobs/s"
        )
    return one, many
