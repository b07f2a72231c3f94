"""Attacks on the control plane through SQL and the tenant routes: a tenant's own Postgres role
(``scheduler tenants grant-sql``), a tenant token, and the database owner's psql, against a
real agent and Postgres."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
import pytest

from scheduler.accounting.reconcile import reconcile
from scheduler.api.auth import create_token
from scheduler.db.migrate import MIGRATION_LOCK_KEY, migrate
from scheduler.db.pool import connect
from scheduler.errors import DatabaseError
from scheduler.sqlaccess import grant_sql
from tests.attacks.outcomes import record
from tests.conftest import AgentHandle, agent_settings, start_agent

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer test-admin-token"}
# The key the claim's advisory lock used before migration 0010 (open to every role).
OLD_CLAIM_KEY = 5918230770001


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def tenant_role(db: asyncpg.Connection, dsn: str, tenant: str) -> asyncpg.Connection:
    role, password = await grant_sql(db, tenant)
    return await connect(as_role(dsn, role, password))


async def wait_for(db: asyncpg.Connection, query: str, *args: object, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not await db.fetchval(query, *args):
            await anyio.sleep(0.05)


@pytest.fixture
async def two_core_agent(dsn: str, state_dir: Path, cgroup_root: str) -> AsyncIterator[AgentHandle]:
    """An agent whose node has 2 cores: two 1-core jobs at a time."""
    async with anyio.create_task_group() as tg:
        handle = await start_agent(
            tg, agent_settings(dsn, state_dir, cgroup_root, node_cpu=2.0, max_running=2)
        )
        yield handle
        tg.cancel_scope.cancel()


async def test_claim_lock_cannot_be_held_by_a_tenant_role(
    dsn: str, db: asyncpg.Connection, agent: AgentHandle
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('mallory')")
    mallory = await tenant_role(db, dsn, "mallory")
    try:
        # The claim's old key (held for the session): the claims go on.
        await mallory.execute("SELECT pg_advisory_lock($1)", OLD_CLAIM_KEY)
        started = time.monotonic()
        job_id = await db.fetchval(
            "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
        )
        await wait_for(
            db,
            "SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = $1",
            job_id,
            timeout=30,
        )
        took = time.monotonic() - started
        # Nor can the role take the lock the claims take now, or lock the jobs table.
        async with mallory.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await mallory.execute("SELECT 1 FROM scheduler.claim_lock FOR UPDATE")
        async with mallory.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await mallory.execute("LOCK TABLE scheduler.jobs IN EXCLUSIVE MODE")
    finally:
        await mallory.close()
    record(
        "tenant role holds the claim's advisory lock",
        f"claims went on (a job ran to the end in {took:.2f} s); the claim row lock: denied",
    )


async def test_id_squatting_is_refused_and_roles_are_bounded(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('mallory'), ('alice')")
    role, password = await grant_sql(db, "mallory")
    mallory = await connect(as_role(dsn, role, password))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await mallory.execute(
                "INSERT INTO scheduler.jobs (id, tenant, argv) OVERRIDING SYSTEM VALUE"
                " SELECT i, 'mallory', ARRAY['true'] FROM generate_series(1, 50) i"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await mallory.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, state) VALUES"
                " ('mallory', ARRAY['true'], 'succeeded')"
            )
        # What a tenant may choose still works.
        mine = await mallory.fetchval(
            "INSERT INTO scheduler.jobs (tenant, argv, cpu, priority) VALUES"
            " ('mallory', ARRAY['true'], 0.5, 3) RETURNING id"
        )
        assert mine is not None
        for _ in range(20):
            await db.execute(
                "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('alice', ARRAY['true'])"
            )
        assert await mallory.fetchval("SHOW statement_timeout") == "30s"
        assert await mallory.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
        # The default limit is 8 sessions; grant-sql --connection-limit sets another.
        assert await db.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", role) == 8
        role, password = await grant_sql(db, "mallory", connection_limit=2)
        second = await connect(as_role(dsn, role, password))
        try:
            with pytest.raises(DatabaseError, match="too many connections"):
                await connect(as_role(dsn, role, password))
        finally:
            await second.close()
    finally:
        await mallory.close()
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs WHERE tenant = 'alice'") == 20
    record(
        "tenant role inserts at future ids (OVERRIDING SYSTEM VALUE)",
        "permission denied; 20 submits of another tenant went through;"
        " role: 2 connections, statement_timeout 30s",
    )


async def test_weighted_child_gets_its_parents_share(
    dsn: str, db: asyncpg.Connection, two_core_agent: AgentHandle
) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name, weight) VALUES ('alpha', 100), ('beta', 100)"
    )
    # The operator may give a child any weight among its siblings; it still shares alpha's.
    await db.execute(
        "INSERT INTO scheduler.tenants (name, parent, weight) VALUES ('alpha-kid', 'alpha', 10000)"
    )
    # beta's jobs first in the queue, then the child's: one transaction, one first claim.
    async with db.transaction():
        for tenant in ("beta", "alpha-kid"):
            await db.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, cpu, memory_bytes)"
                " SELECT $1, ARRAY['sleep', '0.3'], 1, 16777216 FROM generate_series(1, 16)",
                tenant,
            )
    await wait_for(
        db,
        "SELECT count(*) >= 16 FROM scheduler.jobs WHERE started_at IS NOT NULL",
        timeout=90,
    )
    first = await db.fetch(
        "SELECT tenant FROM scheduler.jobs WHERE started_at IS NOT NULL"
        " ORDER BY started_at, id LIMIT 16"
    )
    kid = sum(1 for r in first if r["tenant"] == "alpha-kid")
    assert 6 <= kid <= 10, [r["tenant"] for r in first]
    # Nor can alpha's token give a child more weight than alpha has.
    _, token = await create_token(db, "alpha")
    async with httpx.AsyncClient(base_url=f"http://{two_core_agent.ready.http}", timeout=30) as api:
        response = await api.post(
            "/v1/tenants",
            json={"name": "alpha-pet", "parent": "alpha", "weight": 10000},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "weight" in response.json()["detail"]
        response = await api.post(
            "/v1/tenants",
            json={"name": "alpha-pet", "parent": "alpha", "weight": 50},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
    record(
        "child tenant with weight 10000 against another tenant",
        f"first 16 starts: {kid} child, {16 - kid} other (parents' weights 1:1);"
        " token's weight 10000 child: 422",
    )


async def test_operator_hold(dsn: str, db: asyncpg.Connection, agent: AgentHandle) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name) VALUES ('alpha'), ('beta');"
        " INSERT INTO scheduler.tenants (name, parent) VALUES ('alpha-kid', 'alpha')"
    )
    _, token = await create_token(db, "alpha")
    tenant = {"Authorization": f"Bearer {token}"}
    alpha = await tenant_role(db, dsn, "alpha")
    beta = await tenant_role(db, dsn, "beta")
    try:
        async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as api:
            held = await api.post("/v1/tenants/alpha/freeze", headers=ADMIN)
            assert held.status_code == 200, held.text
            assert held.json()["frozen"] is True and held.json()["operator_hold"] is True
            thaw = await api.post("/v1/tenants/alpha/thaw", headers=tenant)
            assert thaw.status_code == 403, thaw.text
            assert thaw.headers["content-type"].startswith("application/problem+json")
            assert "operator" in thaw.json()["detail"]
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="operator hold"):
                await alpha.execute(
                    "UPDATE scheduler.tenants SET frozen = false WHERE name = 'alpha'"
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await alpha.execute(
                    "UPDATE scheduler.tenants SET operator_hold = false WHERE name = 'alpha'"
                )
            listed = await api.get("/v1/tenants", headers=tenant)
            mine = {t["name"]: t for t in listed.json()["items"]}
            assert mine["alpha"]["operator_hold"] is True
            # A tenant freezes and thaws itself (its child, over HTTP; itself, in SQL).
            own = await api.post("/v1/tenants/alpha-kid/freeze", headers=tenant)
            assert own.status_code == 200 and own.json()["operator_hold"] is False
            own = await api.post("/v1/tenants/alpha-kid/thaw", headers=tenant)
            assert own.status_code == 200 and own.json()["frozen"] is False
            # The database owner in SQL is the operator too.
            await db.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'beta'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="operator hold"):
                await beta.execute(
                    "UPDATE scheduler.tenants SET frozen = false WHERE name = 'beta'"
                )
            code, out, err = await cli(dsn, "tenants", "list")
            assert code == 0, err
            rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]}
            assert rows["alpha"] == "hold" and rows["beta"] == "hold", out
            # Only the operator lifts it.
            await db.execute("UPDATE scheduler.tenants SET frozen = false WHERE name = 'beta'")
            lifted = await api.post("/v1/tenants/alpha/thaw", headers=ADMIN)
            assert lifted.status_code == 200 and lifted.json()["operator_hold"] is False
            # Frozen by the tenant itself: its own to lift.
            await beta.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'beta'")
            await beta.execute("UPDATE scheduler.tenants SET frozen = false WHERE name = 'beta'")
    finally:
        await alpha.close()
        await beta.close()
    record(
        "tenant thaws the operator's freeze",
        "HTTP 403 problem+json, SQL insufficient_privilege; shown as hold; own freeze: thawed",
    )


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "scheduler.cli", *args, "--database-url", dsn], check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_forged_state_update_is_refused(
    dsn: str, db: asyncpg.Connection, agent: AgentHandle
) -> None:
    job_id = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['sleep', '60'], 0.1) RETURNING id"
    )
    await wait_for(db, "SELECT state = 'running' FROM scheduler.jobs WHERE id = $1", job_id)
    # As the database owner (the agent's own role), from another session.
    for forged in (
        "UPDATE scheduler.jobs SET state = 'cancelled' WHERE id = $1",
        "UPDATE scheduler.jobs SET exit_code = 0, finished_at = now() WHERE id = $1",
        "UPDATE scheduler.jobs SET cpu_seconds = 0 WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
            await db.execute(forged, job_id)
        assert "desired_state" in (caught.value.as_dict().get("hint") or "")
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id) == "running"
    # The way that works: the agent kills it and records its end, with totals.
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_id)
    await wait_for(
        db, "SELECT state = 'cancelled' FROM scheduler.jobs WHERE id = $1", job_id, timeout=30
    )
    assert (
        await db.fetchval("SELECT cpu_seconds FROM scheduler.jobs WHERE id = $1", job_id)
        is not None
    )
    now = datetime.now(UTC)
    _, found = await reconcile(db, start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    assert found == []
    # Someone who passes the guard on purpose (the owner can: see docs/operations.md) is
    # still caught by billing check: a job final without totals.
    other = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['sleep', '60'], 0.1) RETURNING id"
    )
    await wait_for(db, "SELECT state = 'running' FROM scheduler.jobs WHERE id = $1", other)
    async with db.transaction():
        await db.execute("SELECT set_config('scheduler.writer', 'agent', true)")
        await db.execute("UPDATE scheduler.jobs SET state = 'cancelled' WHERE id = $1", other)
    _, found = await reconcile(db, start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    problems = [str(d) for d in found if d.subject == f"job {other}"]
    assert any("without totals" in p for p in problems), problems
    assert any("without finished_at" in p for p in problems), problems
    record(
        "owner's UPDATE jobs SET state = 'cancelled' on a running job",
        "refused (hint: desired_state); job kept running, then cancelled with totals;"
        " a forced one is flagged by billing check",
    )


async def test_tenant_role_sees_no_other_tenant(
    dsn: str, db: asyncpg.Connection, agent: AgentHandle
) -> None:
    await db.execute(
        "INSERT INTO scheduler.tenants (name) VALUES ('alpha'), ('beta');"
        " INSERT INTO scheduler.rates (resource, tenant, price) VALUES"
        " ('cpu_second', NULL, 1), ('cpu_second', 'alpha', 2), ('cpu_second', 'beta', 3)"
    )
    alpha = await tenant_role(db, dsn, "alpha")
    await grant_sql(db, "beta")
    heard: list[str] = []
    try:
        prices = sorted(r["price"] for r in await alpha.fetch("SELECT price FROM scheduler.rates"))
        assert prices == [1, 2]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await alpha.fetchval("SELECT scheduler.role_tenants('tenant_beta')")
        assert await alpha.fetchval("SELECT scheduler.role_tenants(current_user)") == ["alpha"]
        # The group role every tenant role may SET ROLE to sees nothing either (it used to
        # see every row: it is mapped to no tenant).
        job_b = await db.fetchval(
            "INSERT INTO scheduler.jobs (tenant, argv) VALUES ('beta', ARRAY['sleep', '60'])"
            " RETURNING id"
        )
        for table in ("jobs", "tenants", "rates"):
            async with alpha.transaction():
                await alpha.execute("SET LOCAL ROLE scheduler_tenant")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await alpha.fetchval(f"SELECT count(*) FROM scheduler.{table}")
        await alpha.add_listener("scheduler_control", lambda *a: heard.append(str(a[3])))
        await wait_for(db, "SELECT state = 'running' FROM scheduler.jobs WHERE id = $1", job_b)
        await db.execute("UPDATE scheduler.jobs SET desired_state = 'frozen' WHERE id = $1", job_b)
        await db.execute("UPDATE scheduler.tenants SET weight = 7 WHERE name = 'beta'")
        with anyio.fail_after(10):
            while len(heard) < 2:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
    finally:
        await alpha.close()
    assert not any(str(job_b) in p or "beta" in p for p in heard), heard
    record(
        "tenant role reads prices, role_tenants of others, LISTEN scheduler_control",
        f"own and global prices only; role_tenants(other): denied; heard {sorted(set(heard))}",
    )


async def test_tenant_role_holding_the_migration_and_node_keys_does_not_stop_an_agent(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('mallory')")
    mallory = await tenant_role(db, dsn, "mallory")
    try:
        # The keys serve and node registration took before migration 0010.
        await mallory.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await mallory.execute(
            "SELECT pg_advisory_lock(hashtextextended('scheduler.nodes/test-node', $1))",
            5918230770002,
        )
        with anyio.fail_after(20):
            assert await migrate(db) == []
        async with anyio.create_task_group() as tg:
            handle = await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root))
            job_id = await db.fetchval(
                "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
            )
            await wait_for(
                db, "SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = $1", job_id
            )
            handle.stop()
            tg.cancel_scope.cancel()
    finally:
        await mallory.close()
    record(
        "tenant role holds the migration and node-registration keys",
        "migrate and agent start went on; a job ran",
    )


async def test_tenant_row_lock_does_not_hold_up_other_tenants_completions(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('mallory'), ('alice')")
    mallory = await tenant_role(db, dsn, "mallory")
    async with anyio.create_task_group() as tg:
        handle = await start_agent(
            tg, agent_settings(dsn, state_dir, cgroup_root, heartbeat_seconds=0.5)
        )
        try:
            mine = await mallory.fetchval(
                "INSERT INTO scheduler.jobs (tenant, argv, cpu) VALUES"
                " ('mallory', ARRAY['sleep', '1'], 0.1) RETURNING id"
            )
            theirs = await db.fetchval(
                "INSERT INTO scheduler.jobs (tenant, argv, cpu) VALUES"
                " ('alice', ARRAY['sleep', '2'], 0.1) RETURNING id"
            )
            await wait_for(
                db,
                "SELECT bool_and(state = 'running') FROM scheduler.jobs WHERE id = ANY($1)",
                [mine, theirs],
            )
            # Its own running job's row, locked with every timeout of its session off.
            await mallory.execute(
                "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;"
                f" BEGIN; SELECT 1 FROM scheduler.jobs WHERE id = {int(mine)} FOR UPDATE"
            )
            started = time.monotonic()
            await wait_for(
                db,
                "SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = $1",
                theirs,
                timeout=30,
            )
            took = time.monotonic() - started
            await wait_for(db, "SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = $1", mine)
            assert mallory.is_closed() or await _terminated(mallory)
        finally:
            handle.stop()
            tg.cancel_scope.cancel()
            mallory.terminate()
    record(
        "tenant role locks its own running job's row, timeouts off",
        f"its session was ended; the other tenant's end was recorded after {took:.1f} s",
    )


async def _terminated(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return True
    return False
