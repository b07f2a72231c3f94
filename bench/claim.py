"""Claim benchmark: the cost of one claim as the queue grows, against a private Postgres (no
agent, no jobs started).

For each queue size, two tenants (one flooding, one with a single job at a time) and 30
claims of one job each, both ways the dispatcher claims: on a NOTIFY (the claim statement
alone) and on its poll (in one transaction with the check for jobs that can never run);
prints p50 and max in milliseconds, as the caller sees them (round trips included). Then
claims of 1 and 64 with 200 tenants in a two-level tree (hierarchical fair share). Then the
same claims of one job from a queue where, of the flooding tenant's jobs, half are gated array
members (max_running reached) and half ask for labels the claiming node lacks, ahead of it in
priority (migration 0016: the worst case of the claim's constraint filter).
With --deps instead of the last two: the claim with 10,000 queued of which half wait on a
dependency (and come first in priority order), against the same 5,000 free jobs alone, and
against the gated queue through an index without the gate (the index before migration 0014).
Usage: python bench/claim.py [--sizes 1,1000,10000] [--deps]
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


async def main(sizes: list[int], deps: bool = False) -> None:
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
        for size in [] if deps else sizes:
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
        if deps:
            lines += await gated(pool)
        else:
            lines += await budgets_on_off(pool, max(sizes))
            lines += await tenant_tree(pool)
            lines += await constrained(pool, sizes)
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


async def claim_times(pool: asyncpg.Pool, want: int, runs: int = 30) -> list[float]:
    """Milliseconds of ``runs`` claims of ``want`` jobs, each rolled back (same queue)."""
    capacity = Capacity(64, 2**40)
    times = []
    async with pool.acquire() as conn:
        for _ in range(runs):
            tr = conn.transaction()
            await tr.start()
            t0 = time.perf_counter()
            rows = await conn.fetch(
                q("claim_jobs"),
                "n1",
                want,
                capacity.cpu,
                capacity.memory_bytes,
                ALLOCATION_SECONDS,
                None,
            )
            times.append((time.perf_counter() - t0) * 1000)
            assert len(rows) == want
            await tr.rollback()
    return times


async def gated(pool: asyncpg.Pool, free: int = 5000, waiting: int = 5000) -> list[str]:
    """The dependency gate (migrations/0014): ``free`` jobs free to start, then ``waiting``
    more that wait on a running job, ahead of the free ones in priority order; one tenant."""
    await pool.execute("DELETE FROM scheduler.jobs WHERE state = 'queued'")
    await pool.execute(
        "INSERT INTO scheduler.jobs (tenant, argv, cpu)"
        " SELECT 'flood', ARRAY['true'], 0.001 FROM generate_series(1, $1)",
        free,
    )
    await pool.execute("ANALYZE scheduler.jobs")
    lines = []
    results: dict[str, float] = {}
    for want in (1, 64):
        alone = statistics.median(await claim_times(pool, want))
        results[f"alone {want}"] = alone
        lines.append(f"claim of {want} with {free} queued, none waiting: p50 {alone:.2f} ms")
    # The job they wait on: running (staged as the agent's claim would leave it).
    dep = await pool.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('flood', ARRAY['sleep', '1'])"
        " RETURNING id"
    )
    await pool.execute(
        "UPDATE scheduler.jobs SET state = 'running', node = 'n0' WHERE id = $1", dep
    )
    await pool.execute(
        "INSERT INTO scheduler.jobs (tenant, argv, cpu, priority, depends_on)"
        " SELECT 'flood', ARRAY['true'], 0.001, 10, ARRAY[$2::bigint]"
        " FROM generate_series(1, $1)",
        waiting,
        dep,
    )
    await pool.execute("ANALYZE scheduler.jobs")
    queued = free + waiting
    for want in (1, 64):
        p50 = statistics.median(await claim_times(pool, want))
        lines.append(
            f"claim of {want} with {queued} queued, {waiting} waiting on a dependency:"
            f" p50 {p50:.2f} ms ({p50 / results[f'alone {want}']:.2f}x the free jobs alone)"
        )
    # The same queue through the index without the gate in its predicate.
    await pool.execute("DROP INDEX scheduler.jobs_queued_tenant_idx")
    await pool.execute(
        "CREATE INDEX jobs_queued_tenant_idx ON scheduler.jobs (tenant, priority DESC, id)"
        " WHERE state = 'queued'"
    )
    await pool.execute("ANALYZE scheduler.jobs")
    for want in (1, 64):
        p50 = statistics.median(await claim_times(pool, want))
        lines.append(
            f"the same, index without the gate: p50 {p50:.2f} ms"
            f" ({p50 / results[f'alone {want}']:.2f}x the free jobs alone)"
        )
    return lines


async def constrained(pool: asyncpg.Pool, sizes: list[int]) -> list[str]:
    """Claims by node n1 (zone=a) of one small job while the flooding tenant has ``size``
    queued: half gated members of one array, half for zone=b (node n2), at a higher priority
    than anything n1 may take."""
    await pool.execute("DELETE FROM scheduler.jobs WHERE state = 'queued'")
    await pool.execute(
        "INSERT INTO scheduler.nodes (name, lease_expires_at, version, cgroup_driver, cpu,"
        " memory_bytes, boot_id, labels) VALUES"
        " ('n1', now() + interval '1 hour', 'bench', 'v1', 64, $1, 'b', '{\"zone\": \"a\"}'),"
        " ('n2', now() + interval '1 hour', 'bench', 'v1', 64, $1, 'b', '{\"zone\": \"b\"}')",
        2**40,
    )
    capacity = Capacity(64, 2**40)
    lines = []
    for size in sizes:
        await pool.execute("DELETE FROM scheduler.jobs WHERE state = 'queued'")
        await pool.execute(
            "INSERT INTO scheduler.jobs (tenant, argv, cpu, priority, constraints)"
            " SELECT 'flood', ARRAY['true'], 0.001, 10, '{\"zone\": \"b\"}'"
            " FROM generate_series(1, $1)",
            size - size // 2,
        )
        await pool.execute(
            "INSERT INTO scheduler.jobs (tenant, argv, cpu, priority, array_id, array_index,"
            " array_waiting)"
            " SELECT 'flood', ARRAY['true'], 0.001, 20, nextval('scheduler.job_array_ids'), i,"
            " true FROM generate_series(1, $1) i",
            size // 2,
        )
        await pool.execute("ANALYZE scheduler.jobs")
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(60):
            unfit = i % 2 == 1
            await pool.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, cpu, constraints)"
                " VALUES ('small', ARRAY['true'], 0.001, '{\"zone\": \"a\"}')"
            )
            t0 = time.perf_counter()
            rows = await claim(pool, "n1", 1, capacity, unfit=unfit)
            times[unfit].append((time.perf_counter() - t0) * 1000)
            assert len(rows) == 1 and rows[0]["tenant"] == "small"
            await pool.execute(
                "UPDATE scheduler.jobs SET state = 'succeeded' WHERE state = 'running'"
            )
        for unfit, label in ((False, "on a NOTIFY"), (True, "with the unfit check")):
            lines.append(
                f"claim of 1 job by a zone=a node with {size} queued (half gated array"
                f" members, half for zone=b), {label}: p50 {statistics.median(times[unfit]):.2f}"
                f" ms, max {max(times[unfit]):.2f} ms"
            )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,1000,10000")
    parser.add_argument(
        "--deps", action="store_true", help="only the dependency gate: 10,000 queued, half gated"
    )
    args = parser.parse_args()
    anyio.run(main, [int(s) for s in args.sizes.split(",")], args.deps)
