"""Why a job waits (jobs.pending_reason, issue 19 item 2), against a real Postgres and the real
claim: row-level reasons from the trigger, the others from the claim for the heads it
examined; nothing written once a reason holds; NULL once started; shown by the CLI."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from decimal import Decimal

import anyio
import asyncpg
import pytest

from scheduler.agent.claim import claim
from scheduler.db.pool import create_pool
from scheduler.policy.admission import Capacity
from tests.conftest import slow, write_as_agent

pytestmark = pytest.mark.anyio
GIB = 1024**3
NODE = Capacity(cpu=2, memory_bytes=8 * GIB)


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    await write_as_agent(db)


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=4, agent_writer=True)
    yield pool
    await pool.close()


async def job(db: asyncpg.Connection, tenant: str = "default", **cols: object) -> int:
    names = ["tenant", "argv", *cols]
    values = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    return int(
        await db.fetchval(
            f"INSERT INTO scheduler.jobs ({', '.join(names)}) VALUES ({values}) RETURNING id",
            tenant,
            ["true"],
            *cols.values(),
        )
    )


async def reason(db: asyncpg.Connection, job_id: int) -> str | None:
    value = await db.fetchval("SELECT pending_reason FROM scheduler.jobs WHERE id = $1", job_id)
    return None if value is None else str(value)


async def reasons_due(db: asyncpg.Connection) -> None:
    """The claim writes reasons at most once a second (migrations/0020_hot_path.sql); this
    makes the next claim one that writes them, for tests whose claims come faster."""
    await db.execute("UPDATE scheduler.claim_lock SET reasons_noted_at = '-infinity'")


async def test_run_at_and_frozen_are_set_by_the_row_and_cleared_with_it(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    later = await job(db, run_at=await db.fetchval("SELECT now() + interval '1 hour'"))
    frozen = await job(db, desired_state="frozen")
    assert await reason(db, later) == "run_at"
    assert await reason(db, frozen) == "frozen"
    assert await claim(pool, "n1", 4, NODE) == []
    assert await reason(db, later) == "run_at"
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'running' WHERE id = $1", frozen)
    await db.execute("UPDATE scheduler.jobs SET run_at = now() WHERE id = $1", later)
    assert await reason(db, frozen) is None and await reason(db, later) is None
    started = {r["id"] for r in await claim(pool, "n1", 4, NODE)}
    assert started == {later, frozen}
    assert (
        await db.fetchval("SELECT count(*) FROM scheduler.jobs WHERE pending_reason IS NOT NULL")
        == 0
    )


async def test_capacity_tenant_limit_and_max_running_jobs_come_from_the_claim(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name, cpu_limit, max_running_jobs) VALUES"
        " ('capped', 1, NULL), ('counted', NULL, 1), ('big', NULL, NULL)"
    )
    first = [await job(db, "capped", cpu=Decimal(1)), await job(db, "counted", cpu=Decimal("0.5"))]
    assert {r["id"] for r in await claim(pool, "n1", 2, NODE)} == set(first)
    capped = await job(db, "capped", cpu=Decimal("0.25"))
    counted = await job(db, "counted", cpu=Decimal("0.25"))
    # 0.5 core left on the node: a 1-core job does not fit now (it could later).
    big = await job(db, "big", cpu=Decimal(1))
    await reasons_due(db)
    assert await claim(pool, "n1", 4, NODE) == []
    assert await reason(db, capped) == "tenant_limit"
    assert await reason(db, counted) == "max_running_jobs"
    assert await reason(db, big) == "capacity"
    # Steady state writes nothing: the rows are not updated again (same row version).
    versions = await db.fetch(
        "SELECT id, xmin::text AS v FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id",
        [capped, counted, big],
    )
    await reasons_due(db)
    assert await claim(pool, "n1", 4, NODE) == []
    assert versions == await db.fetch(
        "SELECT id, xmin::text AS v FROM scheduler.jobs WHERE id = ANY($1) ORDER BY id",
        [capped, counted, big],
    )
    # Room again: started, and the reason is gone.
    await db.execute("UPDATE scheduler.jobs SET state = 'succeeded' WHERE id = ANY($1)", first)
    started = {r["id"] for r in await claim(pool, "n1", 4, NODE)}
    assert started == {capped, counted, big}
    assert [await reason(db, i) for i in (capped, counted, big)] == [None, None, None]


async def test_tenant_frozen_operator_hold_and_budget_come_from_the_claim(
    dsn: str, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('self'), ('held'), ('broke')")
    await db.execute("INSERT INTO scheduler.tenants (name, parent) VALUES ('kid', 'broke')")
    # A tenant's own freeze (as its token would) is tenant_frozen; the operator's is a hold.
    async with db.transaction():
        await db.execute("SELECT set_config('scheduler.acting_tenant', 'self', true)")
        await db.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'self'")
    await db.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'held'")
    # A budget of 0 is reached at once; its subtree waits for it.
    await db.execute(
        "UPDATE scheduler.tenants SET budget = 0, budget_currency = 'USD' WHERE name = 'broke'"
    )
    ids = {name: await job(db, name) for name in ("self", "held", "broke", "kid")}
    assert await claim(pool, "n1", 4, NODE) == []
    assert {n: await reason(db, i) for n, i in ids.items()} == {
        "self": "tenant_frozen",
        "held": "operator_hold",
        "broke": "budget",
        "kid": "budget",
    }
    result = await anyio.run_process(
        [sys.executable, "-m", "scheduler.cli", "jobs", "--database-url", dsn], check=False
    )
    assert result.returncode == 0, result.stderr
    shown = {ln.split()[0]: ln.split()[4] for ln in result.stdout.decode().splitlines()[1:]}
    assert shown == {
        str(i): r
        for i, r in zip(
            ids.values(), ["tenant_frozen", "operator_hold", "budget", "budget"], strict=True
        )
    }
    result = await anyio.run_process(
        [sys.executable, "-m", "scheduler.cli", "show", str(ids["kid"]), "--database-url", dsn],
        check=False,
    )
    assert "pending_reason: budget" in result.stdout.decode()
    # Raising the budget releases the subtree.
    await db.execute("UPDATE scheduler.tenants SET budget = 1 WHERE name = 'broke'")
    started = {r["id"] for r in await claim(pool, "n1", 4, NODE)}
    assert started == {ids["broke"], ids["kid"]}


async def test_a_reason_outside_the_known_ones_is_refused(db: asyncpg.Connection) -> None:
    job_id = await job(db)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE scheduler.jobs SET pending_reason = 'bored' WHERE id = $1", job_id)


async def test_claims_write_reasons_at_most_once_a_second(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A job that reaches a tenant's head and starts a moment later never gets a reason row
    update (the launch path's cost); one that keeps waiting gets it within a second."""
    await db.execute("INSERT INTO scheduler.tenants (name, max_running_jobs) VALUES ('one', 1)")
    running = await job(db, "one")
    assert [r["id"] for r in await claim(pool, "n1", 4, NODE)] == [running]
    waiting = await job(db, "one")
    # The claim above noted reasons (the first ever): this one, right after, does not.
    assert await claim(pool, "n1", 4, NODE) == []
    assert await reason(db, waiting) is None
    with anyio.fail_after(slow(10)):
        while await reason(db, waiting) is None:
            await anyio.sleep(0.2)
            assert await claim(pool, "n1", 4, NODE) == []
    assert await reason(db, waiting) == "max_running_jobs"
