"""Row-level security: a tenant's own Postgres role sees and steers only its own rows."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scheduler.db.pool import connect
from scheduler.sqlaccess import grant_sql, revoke_sql

pytestmark = pytest.mark.anyio


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def test_tenant_role_is_confined_to_its_rows(db: asyncpg.Connection, dsn: str) -> None:
    a, b = f"rls-a-{uuid.uuid4().hex[:6]}", f"rls-b-{uuid.uuid4().hex[:6]}"
    await db.execute(
        "INSERT INTO scheduler.tenants (name, frozen) VALUES ($1, true), ($2, true)", a, b
    )
    await db.execute(
        f"INSERT INTO scheduler.tenants (name, parent, frozen) VALUES ('{a}-kid', '{a}', true)"
    )
    job_b = await db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv) VALUES ($1, ARRAY['true']) RETURNING id", b
    )
    role, password = await grant_sql(db, a)
    tenant = await connect(as_role(dsn, role, password))
    try:
        assert await tenant.fetchval("SELECT current_user") == role
        mine = await tenant.fetchval(
            "INSERT INTO scheduler.jobs (tenant, argv) VALUES ($1, ARRAY['echo', 'hi']) RETURNING id",
            a,
        )
        kid = await tenant.fetchval(
            f"INSERT INTO scheduler.jobs (tenant, argv) VALUES ('{a}-kid', ARRAY['true']) RETURNING id"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await tenant.execute(
                "INSERT INTO scheduler.jobs (tenant, argv) VALUES ($1, ARRAY['true'])", b
            )
        seen = {r["id"] for r in await tenant.fetch("SELECT id FROM scheduler.jobs")}
        assert seen == {mine, kid}
        assert (
            await tenant.execute(
                "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_b
            )
            == "UPDATE 0"
        )
        assert (
            await tenant.execute(
                "UPDATE scheduler.jobs SET desired_state = 'frozen' WHERE id = $1", mine
            )
            == "UPDATE 1"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute(
                "UPDATE scheduler.jobs SET state = 'succeeded' WHERE id = $1", mine
            )
        # Nor through the agent's claim, which runs with its caller's rights.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.fetch("SELECT * FROM scheduler.claim_jobs('n1', 1, 1, 1, 1, NULL)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("DELETE FROM scheduler.jobs")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("INSERT INTO scheduler.tenants (name) VALUES ('x')")
        names = {r["name"] for r in await tenant.fetch("SELECT name FROM scheduler.tenants")}
        assert names == {a, f"{a}-kid"}
        assert (
            await tenant.execute("UPDATE scheduler.tenants SET frozen = false WHERE name = $1", b)
            == "UPDATE 0"
        )
        assert await tenant.fetchval("SELECT count(*) FROM scheduler.usage") == 0
    finally:
        await tenant.close()
    # The agent's own connection still sees everything.
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs") == 3
    assert await revoke_sql(db, a)
    assert not await revoke_sql(db, a)
