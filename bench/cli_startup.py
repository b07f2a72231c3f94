"""CLI start-up benchmark: how long `scheduler jobs` takes, end to end, as a person runs it.

Starts a private Postgres (migrated, 20 jobs queued), then runs the installed `scheduler`
entry point (the venv's console script, as `make serve` users run it) as a new process
`--runs` times each for: `scheduler --version` (interpreter and parser only) and `scheduler
jobs` (parser, settings, connect, one query, the table). Prints the machine, and the median
and p90 wall time and the median CPU time of each (on a busy machine the CPU time is the
command's own cost; the wall time includes waiting for the other processes); the budget for
`scheduler jobs` is 150 ms. The command must not import the agent or the web stack: the
script also prints which of those modules a `scheduler jobs` process imported (none).
Usage: python bench/cli_startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, remove_scratch
from bench.spine import make_base, percentile
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate

BUDGET_MS = 150.0
HEAVY = ("scheduler.agent", "scheduler.api", "uvicorn", "starlette", "prometheus_client")


def scheduler_binary() -> str:
    found = Path(sys.executable).with_name("scheduler")
    return str(found) if found.exists() else "scheduler"


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) milliseconds per run. On a busy machine the wall time
    mostly measures the other processes; the CPU time is what the command itself costs."""
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        wall.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cpu.append(used * 1000)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed: {done.stderr.decode(errors='replace')}")
    return wall, cpu


def heavy_imports(env: dict[str, str]) -> list[str]:
    probe = (
        "import sys; from scheduler.cli import main; main(['jobs']); "
        f"print(','.join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))), "
        "file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    last = done.stderr.rstrip("\n").split("\n")[-1]
    return [m for m in last.split(",") if m]


async def prepare(server: EmbeddedPostgres) -> None:
    await server.start()
    conn = await asyncpg.connect(server.dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO scheduler.jobs (argv) SELECT ARRAY['echo', g::text]"
            " FROM generate_series(1, 20) g"
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    base = make_base()
    server = EmbeddedPostgres(base / "pg", unsafe_fast=True)
    try:
        anyio.run(prepare, server)
        env = {**os.environ, "SCHEDULER_DATABASE_URL": server.dsn, "COLUMNS": "120"}
        binary = scheduler_binary()
        print(describe())
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for label, argv in (
            ("python -c pass (the interpreter alone)", [sys.executable, "-c", "pass"]),
            ("scheduler --version", [binary, "--version"]),
            ("scheduler jobs", [binary, "jobs"]),
        ):
            timed(argv, env, 3)  # warm the page cache
            wall, cpu = timed(argv, env, args.runs)
            print(
                f"{label}: wall median {statistics.median(wall):.0f} ms "
                f"(p90 {percentile(wall, 0.9):.0f}), cpu median {statistics.median(cpu):.0f} ms "
                f"({args.runs} runs)"
            )
        heavy = heavy_imports(env)
        print(f"`scheduler jobs` imported of the agent/web stack: {', '.join(heavy) or 'nothing'}")
        print(f"budget for `scheduler jobs`: {BUDGET_MS:.0f} ms")
    finally:
        anyio.run(server.stop)
        remove_scratch(base)


if __name__ == "__main__":
    main()
