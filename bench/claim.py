"""Claim benchmark: the cost of one claim as the queue grows, against a private Postgres (no
agent, no jobs started).

For each queue size, two tenants (one flooding, one with a single job at a time) and 30
claims of one job each, both ways the dispatcher claims: on a NOTIFY (the claim statement
alone) and on its poll (in one transaction with the check for jobs that can never run);
prints p50 and max in milliseconds, as the caller sees them (round trips included). Then
claims of 1 and 64 with 200 tenants in a two-level tree (hierarchical fair share).
Usage: python bench/claim.py [--sizes 1,1000,10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, remove_scratch
from bench.spine import make_base
from scheduler.agent.claim import claim
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate
from scheduler.db.pool import create_pool
from scheduler.db.queries import q
from scheduler.policy.admission import Capacity
from scheduler.policy.fairshare import ALLOCATION_SECONDS


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
        lines += await budgets_on_off(pool, max(sizes))
        lines += await tenant_tree(pool)
        await pool.close()
    finally:
        await pg.stop()
        remove_scratch(base)
    print(describe())
    for line in lines:
        print(line)


async def budgets_on_off(pool: asyncpg.Pool, size: int, rounds: int = 150) -> list[str]:
    """Claims of one job with ``size`` queued, budgets off and on, interleaved (a load spike
    hits both alike), and 0010's claim (no budget hold, no pending_reason) for reference.

    On: 50 more tenants under a parent with a budget, each with its own budget and 13 months
    of spend in two currencies; the flooding tenant and the small one have budgets far from
    reached. Off: the same tenants and spend, every budget NULL."""
    await pool.execute("DELETE FROM scheduler.jobs WHERE state = 'queued'")
    await pool.execute(
        "INSERT INTO scheduler.jobs (tenant, argv, cpu)"
        " SELECT 'flood', ARRAY['true'], 0.001 FROM generate_series(1, $1)",
        size,
    )
    await pool.execute("INSERT INTO scheduler.tenants (name) VALUES ('org')")
    await pool.execute(
        "INSERT INTO scheduler.tenants (name, parent)"
        " SELECT 'org-' || i, 'org' FROM generate_series(1, 50) i"
    )
    await pool.execute(
        "INSERT INTO scheduler.tenant_spend (tenant, period, currency, amount)"
        " SELECT t.name, p.period, c.currency, 1.5"
        " FROM scheduler.tenants t,"
        "      (SELECT to_char(now() - i * interval '1 month', 'YYYY-MM') AS period"
        "       FROM generate_series(0, 11) i UNION ALL SELECT 'total') p,"
        "      (VALUES ('USD'), ('EUR')) c(currency)"
        " WHERE t.name LIKE 'org%' OR t.name IN ('flood', 'small')"
    )
    # 0010's function under another name: the claim before this change.
    text = Path(__file__).resolve().parents[1] / "migrations" / "0010_control_plane.sql"
    source = text.read_text()
    start = source.index("CREATE OR REPLACE FUNCTION scheduler.claim_jobs(")
    end = source.index("$$;", source.index("AS $$", start)) + 3
    await pool.execute(
        source[start:end].replace("scheduler.claim_jobs(", "scheduler.claim_jobs_0010(", 1)
    )
    await pool.execute("ANALYZE")
    capacity = Capacity(64, 2**40)
    args = ("n1", 1, capacity.cpu, capacity.memory_bytes, ALLOCATION_SECONDS, None)
    on = (
        "UPDATE scheduler.tenants SET budget = 1000000, budget_currency = 'USD'"
        " WHERE name LIKE 'org%' OR name IN ('flood', 'small')"
    )
    off = "UPDATE scheduler.tenants SET budget = NULL, budget_currency = NULL"
    variants = {
        "budgets off": (off, q("claim_jobs")),
        "budgets on": (on, q("claim_jobs")),
        "0010 claim": (off, q("claim_jobs").replace("claim_jobs(", "claim_jobs_0010(")),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    async with pool.acquire() as conn:
        for i in range(rounds * len(variants)):
            name = list(variants)[i % len(variants)]
            setting, statement = variants[name]
            await conn.execute(setting)
            await conn.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, cpu)"
                " VALUES ('small', ARRAY['true'], 0.001)"
            )
            t0 = time.perf_counter()
            async with conn.transaction():
                rows = await conn.fetch(statement, *args)
            times[name].append((time.perf_counter() - t0) * 1000)
            assert len(rows) == 1, name
            await conn.execute(
                "UPDATE scheduler.jobs SET state = 'succeeded' WHERE state = 'running'"
            )
    p50 = {name: statistics.median(t) for name, t in times.items()}
    lines = [
        f"claim of 1 job with {size} queued, {name}: p50 {p50[name]:.2f} ms,"
        f" max {max(times[name]):.2f} ms"
        for name in variants
    ]
    lines.append(
        f"budgets on / off (p50): {p50['budgets on'] / p50['budgets off']:.3f};"
        f" budgets on / 0010 claim: {p50['budgets on'] / p50['0010 claim']:.3f}"
    )
    await pool.execute("UPDATE scheduler.tenants SET budget = NULL, budget_currency = NULL")
    await pool.execute("DROP FUNCTION scheduler.claim_jobs_0010")
    return lines


async def tenant_tree(pool: asyncpg.Pool, parents: int = 20, children: int = 10) -> list[str]:
    """Claims where the hierarchical fair share has work: ``parents`` root tenants with
    ``children`` each (weights 10..10*children), 10 jobs queued per child; each claim is
    rolled back, so every one sees the same queue."""
    await pool.execute("DELETE FROM scheduler.jobs WHERE state = 'queued'")
    await pool.execute(
        "INSERT INTO scheduler.tenants (name, weight)"
        " SELECT 'p' || i, 100 FROM generate_series(1, $1) i",
        parents,
    )
    await pool.execute(
        "INSERT INTO scheduler.tenants (name, parent, weight)"
        " SELECT 'p' || i || '-c' || k, 'p' || i, 10 * k"
        " FROM generate_series(1, $1) i, generate_series(1, $2) k",
        parents,
        children,
    )
    await pool.execute(
        "INSERT INTO scheduler.jobs (tenant, argv, cpu) SELECT t.name, ARRAY['true'], 0.01"
        " FROM scheduler.tenants t, generate_series(1, 10) WHERE t.parent IS NOT NULL"
    )
    await pool.execute("ANALYZE")
    lines = []
    capacity = Capacity(64, 2**40)
    for want in (1, 64):
        times = []
        async with pool.acquire() as conn:
            for _ in range(30):
                tr = conn.transaction()
                await tr.start()
                t0 = time.perf_counter()
                await conn.fetch(
                    q("claim_jobs"),
                    "n1",
                    want,
                    capacity.cpu,
                    capacity.memory_bytes,
                    ALLOCATION_SECONDS,
                    None,
                )
                times.append((time.perf_counter() - t0) * 1000)
                await tr.rollback()
        lines.append(
            f"claim of {want} with {parents * children} tenants under {parents} parents,"
            f" {parents * children * 10} queued: p50 {statistics.median(times):.2f} ms,"
            f" max {max(times):.2f} ms"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,1000,10000")
    args = parser.parse_args()
    anyio.run(main, [int(s) for s in args.sizes.split(",")])
