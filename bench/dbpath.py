"""The database's share of the launch path: what Postgres does per `true` job end to end.

Starts an embedded Postgres with pg_stat_statements and function tracking, a real
`scheduler serve`, runs `--rounds` batches of `--jobs` one-core `true` jobs (bench/launch.py's
end-to-end phase) and prints, per job:
  - CPU of the agent and of the whole cluster (postmaster and every backend),
  - WAL bytes, row writes to scheduler.jobs, buffer accesses of top-level statements
    (these three do not depend on how busy the machine is: compare them between trees),
  - the statements and functions that took the most time (nested ones included, so the
    figures overlap: a trigger's statement is inside the statement that fired it).
With --explain MS, auto_explain logs the plans of statements slower than MS (with nested
statements) to --explain-log. Run it on two trees to compare a change: figures in one run.
Usage: python bench/dbpath.py [--jobs 400] [--rounds 2] [--explain 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import SCRATCH, describe, remove_scratch, wait_quiet
from bench.spine import (
    cluster_cpu_seconds,
    cpu_seconds,
    insert_true_jobs,
    start_agent,
    wait_finished,
)
from scheduler.cgroups.base import CgroupPath, Limits
from scheduler.cgroups.detect import open_driver
from scheduler.db.embedded import EmbeddedPostgres


async def instrument(pg: EmbeddedPostgres, explain_ms: int | None) -> None:
    """pg_stat_statements (nested statements too) and function timing; a restart loads them."""
    conn = await asyncpg.connect(pg.dsn)
    try:
        libraries = "'pg_stat_statements'" + (", 'auto_explain'" if explain_ms else "")
        await conn.execute(f"ALTER SYSTEM SET shared_preload_libraries = {libraries}")
        await conn.execute("ALTER SYSTEM SET track_functions = 'all'")
    finally:
        await conn.close()
    await pg.stop()
    await pg.start()
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        if explain_ms:
            for name, value in (
                ("auto_explain.log_min_duration", f"'{explain_ms}ms'"),
                ("auto_explain.log_analyze", "on"),
                ("auto_explain.log_nested_statements", "on"),
                ("auto_explain.log_buffers", "on"),
            ):
                await conn.execute(f"ALTER SYSTEM SET {name} = {value}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def main(jobs: int, rounds: int, explain_ms: int | None, explain_log: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="sched-dbpath-", dir=SCRATCH))
    base.chmod(0o755)
    root = f"sched-dbpath-{uuid.uuid4().hex[:8]}"
    driver = open_driver(root)
    driver.ensure(CgroupPath(()), Limits())
    pg = EmbeddedPostgres(base / "pg")
    agent = None
    try:
        await pg.start()
        await instrument(pg, explain_ms)
        # Jobs ask for one core each and the node admits as many as bench/launch.py's does.
        agent = start_agent(
            pg.dsn,
            base / "state",
            root,
            extra={"SCHEDULER_MAX_RUNNING": "100", "SCHEDULER_NODE_CPU": "100"},
        )
        conn = await asyncpg.connect(pg.dsn)
        await wait_finished(conn, await insert_true_jobs(conn, 50, cpu=1.0))  # warm up
        # Statistics as a long-running database has them (autovacuum may not have come yet).
        await conn.execute("ANALYZE scheduler.jobs")
        await conn.execute("SELECT pg_stat_statements_reset()")
        await conn.execute("SELECT pg_stat_reset()")
        wait_quiet()
        wal0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        table = "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'jobs'"
        writes0 = await conn.fetchval(table)
        agent0, pg0 = cpu_seconds(agent.pid), cluster_cpu_seconds(pg)
        for _ in range(rounds):
            await wait_finished(conn, await insert_true_jobs(conn, jobs, cpu=1.0))
        agent1, pg1 = cpu_seconds(agent.pid), cluster_cpu_seconds(pg)
        n = jobs * rounds
        await anyio.sleep(0.6)  # the statistics collector's flush (500 ms)
        wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal0)
        writes = await conn.fetchval(table) - writes0
        blocks = await conn.fetchval(
            "SELECT sum(shared_blks_hit + shared_blks_read) FROM pg_stat_statements WHERE toplevel"
        )
        print(describe())
        print(f"{n} `true` jobs in {rounds} batches")
        print(f"agent CPU per job: {(agent1 - agent0) / n * 1000:.3f} ms")
        print(f"Postgres CPU per job: {(pg1 - pg0) / n * 1000:.3f} ms")
        print(
            f"per job: {float(wal) / n:.0f} WAL bytes, {writes / n:.2f} row writes to jobs,"
            f" {float(blocks) / n:.0f} buffer accesses"
        )
        print("statements by total time (us per job, calls per job):")
        for row in await conn.fetch(
            "SELECT calls, total_exec_time,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS text"
            " FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"
        ):
            per_job = row["total_exec_time"] / n * 1000
            print(f"  {per_job:8.1f} {row['calls'] / n:6.2f}  {row['text']}")
        print("functions by own time (us per job, calls per job):")
        for row in await conn.fetch(
            "SELECT funcname, calls, self_time FROM pg_stat_user_functions"
            " WHERE schemaname = 'scheduler' ORDER BY self_time DESC LIMIT 10"
        ):
            per_job = row["self_time"] / n * 1000
            print(f"  {per_job:8.1f} {row['calls'] / n:6.2f}  {row['funcname']}")
        await conn.close()
        if explain_ms:
            shutil.copyfile(pg.log_path, explain_log)
            print(f"plans of statements over {explain_ms} ms: {explain_log}")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        driver.remove_tree(CgroupPath(()))
        await pg.stop()
        remove_scratch(base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--explain", type=int, default=None, metavar="MS")
    parser.add_argument("--explain-log", type=Path, default=Path("dbpath-explain.log"))
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.rounds, args.explain, args.explain_log)
