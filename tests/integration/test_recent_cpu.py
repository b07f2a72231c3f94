"""Each tenant's decayed recent cpu use, kept by the usage inserts (real Postgres)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import anyio
import asyncpg
import pytest

from scheduler.db.migrate import migrate
from scheduler.policy.fairshare import HALF_LIFE_SECONDS, decayed
from tests.conftest import slow

pytestmark = pytest.mark.anyio

INSERT = (
    "INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,"
    " period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,"
    " io_write_bytes, final)"
    " SELECT j, s, 1, t, 'n1', now() - make_interval(secs => age + 1),"
    " now() - make_interval(secs => age), cpu, 0, 0, 0, 0, false"
    " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::numeric[])"
    " AS r(j, s, t, age, cpu)"
)


async def jobs(db: asyncpg.Connection, tenant: str, n: int) -> list[int]:
    return [
        r["id"]
        for r in await db.fetch(
            "INSERT INTO scheduler.jobs (tenant, argv) SELECT $1, ARRAY['true']"
            " FROM generate_series(1, $2) RETURNING id",
            tenant,
            n,
        )
    ]


async def recent(db: asyncpg.Connection) -> dict[str, float]:
    rows = await db.fetch(
        "SELECT tenant, cpu_seconds * scheduler.fair_share_decay("
        "extract(epoch FROM now() - as_of)) AS used FROM scheduler.tenant_recent_cpu"
    )
    return {r["tenant"]: float(r["used"]) for r in rows}


async def test_half_life_is_the_one_the_policy_states(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT scheduler.fair_share_half_life()") == Decimal(
        str(int(HALF_LIFE_SECONDS))
    )


async def test_usage_rows_add_their_decayed_cpu_to_their_tenant(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('a'), ('b')")
    a, b = await jobs(db, "a", 2), await jobs(db, "b", 1)
    await db.execute(
        INSERT,
        [a[0], a[1], b[0]],
        [1, 1, 1],
        ["a", "a", "b"],
        [0.0, HALF_LIFE_SECONDS, 2 * HALF_LIFE_SECONDS],
        [Decimal(100), Decimal(100), Decimal(80)],
    )
    first = await stored(db)
    # Each row counts as it did when its statement ran: 100 + 50 for a, 20 for b.
    assert first["a"][0] == pytest.approx(decayed(100, 0) + decayed(100, HALF_LIFE_SECONDS))
    assert first["b"][0] == pytest.approx(decayed(80, 2 * HALF_LIFE_SECONDS))
    # A second statement decays what is there, by the time between the two statements as
    # their own clocks say (not the test's, which a loaded host stretches), and adds to it.
    await db.execute(INSERT, [a[0]], [2], ["a"], [0.0], [Decimal(10)])
    second = await stored(db)
    between = (second["a"][1] - first["a"][1]).total_seconds()
    assert between >= 0
    assert second["a"][0] == pytest.approx(decayed(150, between) + 10, rel=1e-9)
    assert second["b"] == first["b"]
    got = await recent(db)
    assert got["a"] == pytest.approx(160, rel=1e-2) and got["b"] == pytest.approx(20, rel=1e-2)


async def stored(db: asyncpg.Connection) -> dict[str, tuple[float, datetime]]:
    """Each tenant's kept cpu seconds (as of its as_of) and that as_of."""
    rows = await db.fetch("SELECT tenant, cpu_seconds, as_of FROM scheduler.tenant_recent_cpu")
    return {r["tenant"]: (float(r["cpu_seconds"]), r["as_of"]) for r in rows}


async def test_ancient_rows_decay_to_nothing_without_underflow(db: asyncpg.Connection) -> None:
    [job] = await jobs(db, "default", 1)
    await db.execute(INSERT, [job], [1], ["default"], [1e7], [Decimal(1000)])
    assert (await recent(db))["default"] < 1e-20


async def test_migration_counts_rows_already_there(dsn: str, db: asyncpg.Connection) -> None:
    [job] = await jobs(db, "default", 1)
    await db.execute(INSERT, [job], [1], ["default"], [HALF_LIFE_SECONDS], [Decimal(64)])
    # As if the usage row predated the table: empty it, undo the migration's record, migrate.
    await db.execute("DROP TABLE scheduler.tenant_recent_cpu CASCADE")
    await db.execute("DROP FUNCTION scheduler.usage_recent_cpu() CASCADE")
    await db.execute("DROP FUNCTION scheduler.fair_share_decay(numeric)")
    await db.execute("DROP FUNCTION scheduler.fair_share_half_life()")
    await db.execute("DELETE FROM scheduler.schema_migrations WHERE version = 7")
    await migrate(db)
    assert (await recent(db))["default"] == pytest.approx(32, rel=1e-3)


async def test_concurrent_inserts_in_opposite_orders_do_not_deadlock(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('x'), ('y')")
    xs, ys = await jobs(db, "x", 20), await jobs(db, "y", 20)
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    try:

        async def writer(conn: asyncpg.Connection, order: list[tuple[int, str]], seq: int) -> None:
            for round_ in range(20):
                async with conn.transaction():
                    rows = order[round_ : round_ + 2]
                    await conn.execute(
                        INSERT,
                        [j for j, _ in rows],
                        [seq + round_] * len(rows),
                        [t for _, t in rows],
                        [0.0] * len(rows),
                        [Decimal(1)] * len(rows),
                    )
                    await anyio.sleep(0.001)

        pairs_a = [p for i in range(20) for p in ((xs[i], "x"), (ys[i], "y"))]
        pairs_b = [p for i in range(20) for p in ((ys[i], "y"), (xs[i], "x"))]
        with anyio.fail_after(slow(20)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer, conns[0], pairs_a, 1)
                tg.start_soon(writer, conns[1], pairs_b, 101)
    finally:
        for conn in conns:
            await conn.close()
    # Every row counted once (80 cpu-seconds), less what the run's own duration decayed (1%
    # is 4 s at a half-life of 300 s: the writers take well under a second on a quiet host).
    assert sum((await recent(db)).values()) == pytest.approx(80, rel=1e-2)
