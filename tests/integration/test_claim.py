"""The claim statement against a real Postgres (no agent): fair share, priority, age, holds,
admission against node capacity and tenant limits, and jobs that can never fit."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal

import anyio
import asyncpg
import pytest

from scheduler.agent.claim import claim
from scheduler.db.pool import create_pool
from scheduler.db.queries import q
from scheduler.policy.admission import Capacity
from tests.conftest import write_as_agent

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    # These tests stage job states by hand, as only the agent may write them.
    await write_as_agent(db)


GIB = 1024**3
BIG = Capacity(cpu=64, memory_bytes=256 * GIB)


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=4, agent_writer=True)
    yield pool
    await pool.close()


async def tenants(db: asyncpg.Connection, *rows: tuple[str, int]) -> None:
    for name, weight in rows:
        await db.execute(
            "INSERT INTO scheduler.tenants (name, weight) VALUES ($1, $2)", name, weight
        )


async def flood(
    db: asyncpg.Connection, tenant: str, n: int, cpu: str = "1", **cols: object
) -> None:
    extra = "".join(f", {k}" for k in cols)
    values = "".join(f", ${i}" for i in range(4, 4 + len(cols)))
    await db.execute(
        f"INSERT INTO scheduler.jobs (tenant, argv, cpu{extra})"
        f" SELECT $1, ARRAY['true'], $2::numeric{values} FROM generate_series(1, $3)",
        tenant,
        Decimal(cpu),
        n,
        *cols.values(),
    )


async def test_priority_then_age_within_a_tenant(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    ids = [
        await db.fetchval(
            "INSERT INTO scheduler.jobs (argv, priority) VALUES (ARRAY['true'], $1) RETURNING id", p
        )
        for p in (0, 5, -5, 5)
    ]
    order = [(await claim(pool, "n1", 1, BIG))[0]["id"] for _ in ids]
    assert order == [ids[1], ids[3], ids[0], ids[2]]


async def test_a_tenant_with_one_job_is_not_starved_by_ten_thousand(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await tenants(db, ("big", 100), ("small", 100))
    await flood(db, "big", 10_000)
    small = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('small', ARRAY['true']) RETURNING id"
    )
    first = [r["id"] for r in await claim(pool, "n1", 1, BIG)]
    second = [r["id"] for r in await claim(pool, "n1", 1, BIG)]
    # Tied at first (nothing used yet), the older job wins; then big has a job running.
    assert small in first + second
    # One claim of many interleaves the tenants instead of draining the big one first.
    await db.execute("UPDATE scheduler.jobs SET state = 'succeeded' WHERE state = 'running'")
    small2 = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('small', ARRAY['true']) RETURNING id"
    )
    batch = [r["id"] for r in await claim(pool, "n1", 8, BIG)]
    assert small2 in batch


async def test_weights_split_a_claim_in_their_ratio(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await tenants(db, ("light", 1), ("heavy", 3))
    await flood(db, "light", 50, cpu="0.5")
    await flood(db, "heavy", 50, cpu="0.5")
    rows = await claim(pool, "n1", 64, Capacity(cpu=4, memory_bytes=256 * GIB))
    assert Counter(r["tenant"] for r in rows) == {"light": 2, "heavy": 6}


async def test_a_subtree_shares_its_parents_part_whatever_its_childrens_weights(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    # alpha and beta 1:1 at the root; alpha's children 1:3, one of them with a weight far
    # above beta's. The same split as scheduler.policy.fairshare.order.
    await tenants(db, ("alpha", 100), ("beta", 100))
    await db.execute(
        "INSERT INTO scheduler.tenants (name, parent, weight)"
        " VALUES ('a1', 'alpha', 1000), ('a3', 'alpha', 3000)"
    )
    for tenant in ("beta", "a1", "a3"):
        await flood(db, tenant, 20, cpu="0.5")
    rows = await claim(pool, "n1", 64, Capacity(cpu=8, memory_bytes=256 * GIB))
    assert Counter(r["tenant"] for r in rows) == {"beta": 8, "a1": 2, "a3": 6}


async def test_recent_usage_decides_who_goes_first(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await tenants(db, ("busy", 100), ("idle", 100))
    done = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('busy', ARRAY['true']) RETURNING id"
    )
    await db.execute(
        "INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,"
        " period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,"
        " io_write_bytes, final) VALUES ($1, 1, 1, 'busy', 'n1', now() - interval '1 minute',"
        " now(), 600, 0, 0, 0, 0, true)",
        done,
    )
    await db.execute("UPDATE scheduler.jobs SET state = 'cancelled' WHERE id = $1", done)
    await flood(db, "busy", 3)
    await flood(db, "idle", 3)
    rows = await claim(pool, "n1", 3, BIG)
    assert {r["tenant"] for r in rows} == {"idle"}


async def test_node_capacity_is_never_oversubscribed(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await flood(db, "default", 10, cpu="0.75")
    node = Capacity(cpu=2, memory_bytes=256 * GIB)
    assert len(await claim(pool, "n1", 10, node)) == 2  # 1.5 cores; a third would be 2.25
    assert await claim(pool, "n1", 10, node) == []
    # Another node has its own capacity.
    assert len(await claim(pool, "n2", 10, node)) == 2
    await db.execute(
        "UPDATE scheduler.jobs SET state = 'frozen' WHERE id = (SELECT min(id) FROM scheduler.jobs)"
    )
    assert await claim(pool, "n1", 10, node) == []  # frozen jobs keep their share
    await db.execute("UPDATE scheduler.jobs SET state = 'succeeded' WHERE node = 'n1'")
    assert len(await claim(pool, "n1", 10, node)) == 2
    memory = Capacity(cpu=64, memory_bytes=GIB)
    await flood(db, "default", 4, cpu="0.1", memory_bytes=400 * 1024 * 1024)
    await db.execute("UPDATE scheduler.jobs SET state = 'succeeded' WHERE state = 'running'")
    await db.execute("UPDATE scheduler.jobs SET state = 'cancelled' WHERE cpu = 0.75")
    assert len(await claim(pool, "n3", 10, memory)) == 2  # 800 MiB of 1 GiB


async def test_tenant_limits_hold_across_nodes_and_down_the_tree(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name, max_running_jobs, cpu_limit) VALUES ('org', 3, 2)"
    )
    await db.execute("INSERT INTO scheduler.tenants (name, parent) VALUES ('team-a', 'org')")
    await db.execute(
        "INSERT INTO scheduler.tenants (name, parent, max_running_jobs) VALUES ('team-b', 'org', 1)"
    )
    await flood(db, "team-a", 5, cpu="0.5")
    await flood(db, "team-b", 5, cpu="0.5")
    first = await claim(pool, "n1", 10, BIG)
    second = await claim(pool, "n2", 10, BIG)
    claimed = Counter(r["tenant"] for r in first + second)
    assert sum(claimed.values()) == 3  # org's max_running_jobs, over both nodes
    assert claimed["team-b"] <= 1
    await db.execute("UPDATE scheduler.tenants SET max_running_jobs = NULL WHERE name = 'org'")
    more = await claim(pool, "n2", 10, BIG)
    # org's cpu_limit of 2 cores: four 0.5-core jobs in all.
    assert sum(claimed.values()) + len(more) == 4


async def test_frozen_ancestor_holds_the_queue_and_frozen_jobs_wait(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name, frozen) VALUES ('org', true)")
    await db.execute("INSERT INTO scheduler.tenants (name, parent) VALUES ('team', 'org')")
    await flood(db, "team", 2)
    held = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, desired_state) VALUES (ARRAY['true'], 'frozen')"
        " RETURNING id"
    )
    later = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, run_at) VALUES (ARRAY['true'], now() + interval '1 hour')"
        " RETURNING id"
    )
    assert await claim(pool, "n1", 10, BIG) == []
    await db.execute("UPDATE scheduler.tenants SET frozen = false WHERE name = 'org'")
    assert {r["tenant"] for r in await claim(pool, "n1", 10, BIG)} == {"team"}
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'running' WHERE id = $1", held)
    assert [r["id"] for r in await claim(pool, "n1", 10, BIG)] == [held]
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", later) == "queued"


async def test_jobs_that_can_never_fit_fail_at_once_with_the_reason(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name, memory_limit_bytes) VALUES ('org', 1073741824)"
    )
    await db.execute("INSERT INTO scheduler.tenants (name, parent) VALUES ('team', 'org')")
    await db.execute("INSERT INTO scheduler.tenants (name, max_running_jobs) VALUES ('off', 0)")
    node = Capacity(cpu=2, memory_bytes=8 * GIB)
    too_many_cores = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['true'], 3) RETURNING id"
    )
    too_much_memory = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv, memory_bytes) VALUES ('team', ARRAY['true'],"
        " 2147483648) RETURNING id"
    )
    never = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('off', ARRAY['true']) RETURNING id"
    )
    fits = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
    )
    assert [r["id"] for r in await claim(pool, "n1", 10, node)] == [fits]
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, state, error, finished_at FROM scheduler.jobs WHERE id = ANY($1)",
            [too_many_cores, too_much_memory, never],
        )
    }
    assert {r["state"] for r in rows.values()} == {"failed"}
    assert all(r["finished_at"] is not None for r in rows.values())
    assert (
        rows[too_many_cores]["error"]
        == "cannot ever run: asks for 3 cpu cores, the largest node has 2"
    )
    assert rows[too_much_memory]["error"] == (
        "cannot ever run: asks for 2147483648 bytes of memory, tenant org allows 1073741824"
    )
    assert "tenant off allows no running jobs" in rows[never]["error"]


async def test_the_claim_on_a_notify_is_one_statement(dsn: str, db: asyncpg.Connection) -> None:
    await flood(db, "default", 3)
    # Jobs that can never run are left to the check the dispatcher runs once per poll.
    never = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['true'], 100) RETURNING id"
    )
    sent: list[str] = []
    pool = await create_pool(dsn, min_size=1, max_size=1, agent_writer=True)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
        rows = await claim(pool, "n1", 2, BIG, 7, unfit=False)
    finally:
        await pool.close()
    assert len(rows) == 2
    assert sent == [q("claim_jobs")]  # no BEGIN, no lock of its own, no COMMIT
    claimed = await db.fetch(
        "SELECT node, node_epoch, attempts FROM scheduler.jobs WHERE state = 'running'"
    )
    assert {tuple(r) for r in claimed} == {("n1", 7, 1)}
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", never) == "queued"


async def test_the_claim_waits_for_the_lock_and_sees_the_claim_before_it(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name, max_running_jobs) VALUES ('one', 1)")
    await flood(db, "one", 2)
    results: list[list[asyncpg.Record]] = []

    async def claim_on_n2() -> None:
        results.append(await claim(pool, "n2", 10, BIG, unfit=False))

    # A claim of node n1, not committed yet, holds the lock...
    n1 = db.transaction()
    await n1.start()
    first = await db.fetch(q("claim_jobs"), "n1", 10, 64, 256 * GIB, 60.0, None)
    assert len(first) == 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(claim_on_n2)
        await anyio.sleep(0.3)
        assert results == []  # ...so n2's claim waits for it,
        await n1.commit()
    assert results == [[]]  # then sees it: the tenant's one running job is taken.
    config = await db.fetchval(
        "SELECT proconfig FROM pg_proc WHERE oid = 'scheduler.claim_jobs'::regproc"
    )
    assert config == ["jit=off", "plan_cache_mode=force_generic_plan"]


async def test_a_retried_attempt_is_claimed_with_the_jobs_last_usage_row(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    first = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
    )
    [row] = await claim(pool, "n1", 1, BIG, unfit=False)
    assert (row["id"], row["attempts"], row["usage_seq"]) == (first, 1, 0)
    await db.execute(
        "INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,"
        " period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,"
        " io_write_bytes, final) SELECT $1, s, 1, 'default', 'n1', now(), now(), 0, 0, 0, 0, 0,"
        " s = 3 FROM generate_series(1, 3) s",
        first,
    )
    await db.execute("UPDATE scheduler.jobs SET state = 'queued', node = NULL WHERE id = $1", first)
    [row] = await claim(pool, "n1", 1, BIG, unfit=False)
    assert (row["id"], row["attempts"], row["usage_seq"]) == (first, 2, 3)
