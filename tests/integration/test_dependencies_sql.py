"""Dependencies through SQL (migrations/0014): the insert checks, as a tenant's own role, and
the release and cascade that ending a job sets off, without an agent (the states are staged
as the agent writes them)."""

from __future__ import annotations

import asyncpg
import pytest

from scheduler.db.pool import connect
from scheduler.db.queries import q
from scheduler.sqlaccess import grant_sql
from tests.attacks.test_sql_control import as_role
from tests.conftest import write_as_agent

pytestmark = pytest.mark.anyio


async def submit(conn: asyncpg.Connection, tenant: str, after: list[int] | None = None) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv, depends_on) VALUES ($1, ARRAY['true'], $2)"
        " RETURNING id",
        tenant,
        after or [],
    )
    return job_id


async def end(db: asyncpg.Connection, job_id: int, state: str) -> None:
    await db.execute(
        "UPDATE scheduler.jobs SET state = $2, finished_at = now() WHERE id = $1", job_id, state
    )


async def row(db: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    record = await db.fetchrow(
        "SELECT state, error, deps_waiting FROM scheduler.jobs WHERE id = $1", job_id
    )
    assert record is not None
    return record


async def test_tenant_role_refusals_do_not_tell_unknown_from_foreign(
    db: asyncpg.Connection, dsn: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('alpha'), ('beta')")
    theirs = await submit(db, "beta")
    role, password = await grant_sql(db, "alpha")
    alpha = await connect(as_role(dsn, role, password))
    try:
        mine = await submit(alpha, "alpha")
        refusals = {
            "foreign": [theirs],
            "unknown": [theirs + 1000],
            "duplicate": [mine, mine],
            "too many": list(range(1, 100_001)),
            "null": None,
        }
        messages = {}
        for what, after in refusals.items():
            if after is None:
                query = (
                    "INSERT INTO scheduler.jobs (tenant, argv, depends_on)"
                    " VALUES ('alpha', ARRAY['true'], ARRAY[NULL::bigint])"
                )
                with pytest.raises(asyncpg.PostgresError) as caught:
                    await alpha.execute(query)
            else:
                with pytest.raises(asyncpg.PostgresError) as caught:
                    await submit(alpha, "alpha", after)
            messages[what] = str(caught.value)
        assert messages["foreign"] == f"depends_on: {theirs} is not a job of tenant 'alpha'"
        assert messages["unknown"] == f"depends_on: {theirs + 1000} is not a job of tenant 'alpha'"
        assert messages["duplicate"] == f"depends_on lists job {mine} more than once"
        assert messages["too many"] == "depends_on lists 100000 jobs: at most 1000 are allowed"
        assert messages["null"] == "depends_on must not contain NULL"
        # Fixed after submit, for the tenant (no privilege) and the owner (the trigger).
        child = await submit(alpha, "alpha", [mine])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await alpha.execute("UPDATE scheduler.jobs SET depends_on = '{}' WHERE id = $1", child)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await alpha.execute("UPDATE scheduler.jobs SET deps_waiting = 0 WHERE id = $1", child)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="fixed at submit"):
            await db.execute("UPDATE scheduler.jobs SET depends_on = '{}' WHERE id = $1", child)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="kept by the database"):
            await db.execute("UPDATE scheduler.jobs SET deps_waiting = 0 WHERE id = $1", child)
        assert (await row(db, child))["deps_waiting"] == 1
    finally:
        await alpha.close()


async def test_self_reference_is_refused(db: asyncpg.Connection) -> None:
    next_id = await db.fetchval("SELECT COALESCE(max(id), 0) + 1 FROM scheduler.jobs")
    first = await submit(db, "default")
    assert first == next_id
    with pytest.raises(
        asyncpg.CheckViolationError, match=f"job {first + 1} cannot depend on itself"
    ):
        await submit(db, "default", [first, first + 1])


async def test_diamond_with_one_failure_and_a_chain_cascade(db: asyncpg.Connection) -> None:
    await write_as_agent(db)
    a = await submit(db, "default")
    b = await submit(db, "default", [a])
    c = await submit(db, "default", [a])
    d = await submit(db, "default", [b, c])
    e = await submit(db, "default", [d])
    f = await submit(db, "default", [e])
    assert [(await row(db, j))["deps_waiting"] for j in (a, b, c, d, e, f)] == [0, 1, 1, 2, 1, 1]
    await end(db, a, "succeeded")
    assert [(await row(db, j))["deps_waiting"] for j in (b, c, d)] == [0, 0, 2]
    await end(db, c, "failed")
    assert tuple(await row(db, d)) == ("cancelled", f"dependency {c} failed", 2)
    assert tuple(await row(db, e)) == ("cancelled", f"dependency {d} cancelled", 1)
    assert tuple(await row(db, f)) == ("cancelled", f"dependency {e} cancelled", 1)
    assert tuple(await row(db, b)) == ("queued", None, 0)
    # A job after one that ended otherwise is refused; after one that succeeded, free at once.
    with pytest.raises(asyncpg.CheckViolationError, match=f"job {c} already ended failed"):
        await submit(db, "default", [c])
    assert (await row(db, await submit(db, "default", [a])))["deps_waiting"] == 0


async def test_the_claim_takes_a_dependent_only_once_released_and_again_on_retry(
    db: asyncpg.Connection,
) -> None:
    await write_as_agent(db)

    async def claimed() -> list[int]:
        async with db.transaction():
            rows = await db.fetch(q("claim_jobs"), "n1", 10, 64, 1 << 40, 0, None)
        return sorted(r["id"] for r in rows)

    first = await submit(db, "default")
    after = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv, depends_on, max_attempts, priority)"
        " VALUES ('default', ARRAY['true'], $1, 2, 10) RETURNING id",
        [first],
    )
    assert await claimed() == [first]  # the dependent, ahead in priority, waits
    assert await claimed() == []
    await end(db, first, "succeeded")
    assert await claimed() == [after]
    # Its attempt failed with one left: back to the queue (as finish_jobs does), still free.
    await db.execute("UPDATE scheduler.jobs SET state = 'queued', node = NULL WHERE id = $1", after)
    assert (await row(db, after))["deps_waiting"] == 0
    assert await claimed() == [after]
