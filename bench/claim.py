"""Claim benchmark: the cost of one claim as the queue grows, against a private Postgres (no
agent, no jobs started).

For each queue size, two tenants (one flooding, one with a single job at a time) and 30
claims of one job each, both ways the dispatcher claims: on a NOTIFY (the claim statement
alone) and on its poll (in one transaction with the check for jobs that can never run);
prints p50 and max in milliseconds, as the caller sees them (round trips included).
Usage: python bench/claim.py [--sizes 1,1000,10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, remove_scratch
from bench.spine import make_base
from scheduler.agent.claim import claim
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate
from scheduler.db.pool import create_pool
from scheduler.policy.admission import Capacity


async def main(sizes: list[int]) -> None:
    base = make_base()
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    lines = []
    try:
        pool = await create_pool(pg.dsn, min_size=1, max_size=2, agent_writer=True)
        async with pool.acquire() as conn:
            await migrate(conn)
        await pool.execute("INSERT INTO scheduler.tenants (name) VALUES ('flood'), ('small')")
        capacity = Capacity(64, 2**40)
        for size in sizes:
            await pool.execute("DELETE FROM scheduler.jobs WHERE state = 'queued'")
            await pool.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, cpu)"
                " SELECT 'flood', ARRAY['true'], 0.001 FROM generate_series(1, $1)",
                size,
            )
            await pool.execute("ANALYZE scheduler.jobs")
            times: dict[bool, list[float]] = {False: [], True: []}
            for i in range(60):
                unfit = i % 2 == 1
                await pool.execute(
                    "INSERT INTO scheduler.jobs (tenant, argv, cpu)"
                    " VALUES ('small', ARRAY['true'], 0.001)"
                )
                t0 = time.perf_counter()
                rows = await claim(pool, "n1", 1, capacity, unfit=unfit)
                times[unfit].append((time.perf_counter() - t0) * 1000)
                assert len(rows) == 1
                await pool.execute(
                    "UPDATE scheduler.jobs SET state = 'succeeded' WHERE state = 'running'"
                )
            for unfit, label in ((False, "on a NOTIFY"), (True, "with the unfit check")):
                lines.append(
                    f"claim of 1 job with {size} queued, {label}:"
                    f" p50 {statistics.median(times[unfit]):.2f} ms,"
                    f" max {max(times[unfit]):.2f} ms"
                )
        await pool.close()
    finally:
        await pg.stop()
        remove_scratch(base)
    print(describe())
    for line in lines:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,1000,10000")
    args = parser.parse_args()
    anyio.run(main, [int(s) for s in args.sizes.split(",")])
