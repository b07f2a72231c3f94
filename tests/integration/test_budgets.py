"""Budgets (issue 19 item 1) on real agents: a tenant over its budget has its next job held
(pending_reason 'budget') until the budget is raised; action freeze freezes its running jobs
and a raise thaws them; two agents on one database overspend one budget by no more than the
jobs already running use; spend is priced as the billing export prices, in the budget's
currency only; and only the operator sets a budget."""

from __future__ import annotations

import csv
import io
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from scheduler.accounting.billing import export
from scheduler.api.auth import create_token
from scheduler.db.pool import connect
from scheduler.sqlaccess import grant_sql
from tests import cgroup_files
from tests.agent_process import start_serve, stop, wait_ready
from tests.conftest import agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final, wait_state
from tests.integration.test_sql_access import as_role

pytestmark = pytest.mark.anyio
BURN = ["sh", "-c", "while :; do :; done"]
FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.1}
ADMIN = {"Authorization": "Bearer test-admin-token"}
# About a cpu-second of work (a fixed count), however long the loaded host takes to give it.
ONE_CPU_SECOND = ["sh", "-c", "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done"]


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "scheduler.cli", *args, "--database-url", dsn], check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def priced_tenant(db: asyncpg.Connection, name: str, cpu_price: str) -> None:
    """A tenant whose cpu seconds cost ``cpu_price`` USD (memory and io free)."""
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1)", name)
    await db.execute(
        "INSERT INTO scheduler.rates (resource, tenant, price, currency) VALUES"
        " ('cpu_second', $1, $2, 'USD'), ('memory_gib_hour', $1, 0, 'USD'),"
        " ('io_gib', $1, 0, 'USD')",
        name,
        Decimal(cpu_price),
    )


async def spend(db: asyncpg.Connection, tenant: str) -> Decimal:
    value = await db.fetchval("SELECT spend FROM scheduler.budget_status WHERE tenant = $1", tenant)
    return Decimal(value)


async def wait_spent(db: asyncpg.Connection, tenant: str, timeout: float = 60) -> None:
    """Until the tenant's subtree spent its budget."""
    with anyio.fail_after(slow(timeout)):
        while not await db.fetchval(
            "SELECT spend >= budget FROM scheduler.budget_status WHERE tenant = $1", tenant
        ):
            await anyio.sleep(0.05)


async def wait_reason(
    db: asyncpg.Connection, job_id: int, reason: str, timeout: float = 10
) -> None:
    with anyio.fail_after(slow(timeout)):
        while (
            await db.fetchval("SELECT pending_reason FROM scheduler.jobs WHERE id = $1", job_id)
            != reason
        ):
            await anyio.sleep(0.05)


@pytest.mark.timeout(300)
async def test_over_budget_the_next_job_waits_with_reason_budget_until_raised(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await priced_tenant(db, "acme", "0.01")
    code, out, err = await cli(
        dsn, "tenants", "budget", "acme", "0.02", "--currency", "USD", "--period", "month"
    )
    assert code == 0, err
    assert "budget 0.02 USD per month (action hold)" in out
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root, **FAST))
        burner = await submit(db, BURN, tenant="acme", cpu=Decimal(1))
        await wait_spent(db, "acme")
        # /metrics shows the budget and the spend (refreshed by the sampler's sweep).
        async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as api:
            with anyio.fail_after(slow(10)):
                while True:
                    text = (await api.get("/metrics")).text
                    values = {
                        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("scheduler_tenant_")
                        and 'tenant="acme"' in line
                        and 'currency="USD"' in line
                    }
                    if values.get("scheduler_tenant_spend", 0) >= 0.02:
                        break
                    await anyio.sleep(0.1)
            assert values["scheduler_tenant_budget"] == 0.02
        held = await submit(db, ["true"], tenant="acme")
        await wait_reason(db, held, "budget")
        async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as api:
            job = (await api.get(f"/v1/jobs/{held}", headers=ADMIN)).json()
            assert (job["state"], job["pending_reason"]) == ("queued", "budget")
        # Several claims later (NOTIFY, polls every 0.5 s) it still waits, never failed.
        await anyio.sleep(2.0)
        row = await db.fetchrow(
            "SELECT state, pending_reason FROM scheduler.jobs WHERE id = $1", held
        )
        assert row is not None and (row["state"], row["pending_reason"]) == ("queued", "budget")
        code, out, err = await cli(dsn, "jobs", "--tenant", "acme")
        assert code == 0, err
        line = next(ln for ln in out.splitlines() if ln.split()[0] == str(held))
        assert line.split()[3:5] == ["queued", "budget"]
        code, out, err = await cli(dsn, "tenants", "budget", "acme")
        assert code == 0, err
        assert "REACHED" in out
        # The hold keeps running jobs running.
        assert (
            await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", burner) == "running"
        )
        code, out, err = await cli(dsn, "tenants", "budget", "acme", "100")
        assert code == 0, err
        [done] = await wait_final(db, [held], timeout=20)
        assert done["state"] == "succeeded"
        assert done["pending_reason"] is None
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", burner
        )
        await wait_final(db, [burner])
        tg.cancel_scope.cancel()


@pytest.mark.timeout(300)
async def test_budget_action_freeze_freezes_running_jobs_and_a_raise_thaws_them(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await priced_tenant(db, "acme", "0.01")
    await db.execute("INSERT INTO scheduler.tenants (name, parent) VALUES ('team', 'acme')")
    await db.execute(
        "INSERT INTO scheduler.rates (resource, tenant, price, currency) VALUES"
        " ('cpu_second', 'team', 0.01, 'USD')"
    )
    code, _, err = await cli(dsn, "tenants", "budget", "acme", "0.02", "--action", "freeze")
    assert code == 0, err
    async with anyio.create_task_group() as tg:
        await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root, **FAST))
        # The child's spend counts against its parent's budget.
        job = await submit(db, BURN, tenant="team", cpu=Decimal(1))
        await wait_spent(db, "acme")
        await wait_state(db, job, "frozen", timeout=20)
        assert cgroup_files.freezer_state(cgroup_root, "acme") == "FROZEN"
        # The operator's flag is not touched: the budget's freeze is its own.
        assert not await db.fetchval("SELECT frozen FROM scheduler.tenants WHERE name = 'acme'")
        spent = await spend(db, "acme")
        await anyio.sleep(1.5)
        # Frozen: at most the last sampling period is added after the freeze.
        assert await spend(db, "acme") - spent < Decimal("0.005")
        code, _, err = await cli(dsn, "tenants", "budget", "acme", "1", "--action", "freeze")
        assert code == 0, err
        await wait_state(db, job, "running", timeout=20)
        assert cgroup_files.freezer_state(cgroup_root, "acme") == "THAWED"
        await db.execute("UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job)
        await wait_final(db, [job])
        tg.cancel_scope.cancel()


@pytest.mark.timeout(300)
async def test_two_agents_overspend_one_budget_by_no_more_than_the_running_jobs_use(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
) -> None:
    await priced_tenant(db, "acme", "0.01")
    budget = Decimal("0.03")  # three cpu-seconds
    await db.execute(
        "UPDATE scheduler.tenants SET budget = $1, budget_currency = 'USD' WHERE name = 'acme'",
        budget,
    )
    procs = []
    ids: list[int] = []
    try:
        for node, root in (("node-a", cgroup_root), ("node-b", peer_cgroup_roots[0])):
            log = state_dir / f"{node}.log"
            proc = start_serve(
                dsn,
                state_dir / node,
                root,
                log,
                node=node,
                max_running=2,
                node_cpu=2,
                sample_interval=0.2,
                sample_interval_floor=0.1,
            )
            procs.append(proc)
            await wait_ready(proc, log, 1, node=node)
        # Queued only once both agents are up, in one transaction: both are woken by the
        # same commit and each claims its two. (Queued before, the first agent's jobs could
        # spend the budget before a slow host had started the second.)
        async with db.transaction():
            ids = [
                await submit(db, ONE_CPU_SECOND, tenant="acme", cpu=Decimal(1)) for _ in range(12)
            ]
        await wait_spent(db, "acme", timeout=120)
        # Everything that started ends; what is still queued then waits for the budget.
        with anyio.fail_after(slow(60)):
            while await db.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1)"
                " AND state NOT IN ('queued', 'succeeded')",
                ids,
            ):
                await anyio.sleep(0.1)
        await anyio.sleep(1.5)  # a few more claims of both agents
        rows = await db.fetch(
            "SELECT id, state, node, pending_reason FROM scheduler.jobs WHERE id = ANY($1)", ids
        )
    finally:
        for proc in procs:
            stop(proc)
    ran = [r for r in rows if r["state"] == "succeeded"]
    waiting = [r for r in rows if r["state"] == "queued"]
    assert waiting, "every job ran: the budget held nothing"
    assert {r["pending_reason"] for r in waiting} == {"budget"}
    assert {r["node"] for r in ran} == {"node-a", "node-b"}, "both agents claimed"
    # The jobs' own costs, from the bill's source (the usage rows), priced per job.
    costs = {
        r["job_id"]: Decimal(r["cost"])
        for r in await db.fetch(
            "SELECT job_id, sum(cpu_seconds) * 0.01 AS cost FROM scheduler.usage"
            " WHERE job_id = ANY($1) GROUP BY job_id",
            ids,
        )
    }
    total = await spend(db, "acme")
    assert total == sum(costs.values())
    # At most 4 jobs run at once (2 per node); only they can add to the spend once the
    # ledger shows the budget reached: no claim on either node starts one more.
    bound = budget + 4 * max(costs.values())
    assert total <= bound, (total, bound, len(ran))


@pytest.mark.timeout(300)
async def test_spend_is_priced_as_the_bill_in_the_budget_currency_only(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    # cpu in USD, memory in EUR; a later cpu rate for the tenant replaces the default one.
    await db.execute(
        "INSERT INTO scheduler.rates (resource, tenant, price, currency, valid_from) VALUES"
        " ('cpu_second', NULL, 0.5, 'USD', '-infinity'),"
        " ('cpu_second', 'acme', 0.0013, 'USD', now() - interval '1 day'),"
        " ('memory_gib_hour', NULL, 0.07, 'EUR', '-infinity'),"
        " ('io_gib', NULL, 0.01, 'USD', '-infinity')"
    )
    await db.execute(
        "UPDATE scheduler.tenants SET budget = 1000, budget_currency = 'USD' WHERE name = 'acme'"
    )
    async with anyio.create_task_group() as tg:
        await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root, **FAST))
        ids = [
            await submit(
                db, ["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"], tenant="acme"
            )
            for _ in range(3)
        ]
        await wait_final(db, ids, timeout=60)
        tg.cancel_scope.cancel()
    now = datetime.now(UTC)
    text = await export(
        db, start=now - timedelta(days=40), end=now + timedelta(days=1), fmt="csv", tenant="acme"
    )
    billed: dict[str, Decimal] = {}
    for line in csv.DictReader(io.StringIO(text)):
        billed[line["currency"]] = billed.get(line["currency"], Decimal(0)) + Decimal(line["cost"])
    month = now.strftime("%Y-%m")
    kept = {
        r["currency"]: Decimal(r["amount"])
        for r in await db.fetch(
            "SELECT currency, amount FROM scheduler.tenant_spend WHERE tenant = 'acme'"
            " AND period = $1",
            month,
        )
    }
    assert set(kept) == set(billed) == {"USD", "EUR"}
    for currency, amount in billed.items():
        # The bill rounds each line to 1e-10; the spend is unrounded.
        assert abs(kept[currency] - amount) < Decimal("1e-8"), (currency, kept, billed)
    # The budget counts the USD rows only.
    assert abs(await spend(db, "acme") - billed["USD"]) < Decimal("1e-8")


async def test_only_the_operator_sets_a_budget(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    await db.execute(
        "UPDATE scheduler.tenants SET budget = 1, budget_currency = 'USD' WHERE name = 'acme'"
    )
    # A tenant SQL role: no privilege on the budget columns.
    role, password = await grant_sql(db, "acme")
    tenant = await connect(as_role(dsn, role, password))
    try:
        for column, value in (
            ("budget", "1000"),
            ("budget_currency", "'EUR'"),
            ("budget_period", "'total'"),
            ("budget_action", "'hold'"),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await tenant.execute(
                    f"UPDATE scheduler.tenants SET {column} = {value} WHERE name = 'acme'"
                )
        # Nor can it add to (or take from) anyone's spend, or read the others' budgets.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("SELECT scheduler.add_spend('[]')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("UPDATE scheduler.tenant_spend SET amount = 0")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.fetch("SELECT * FROM scheduler.budget_status")
        # It may still freeze itself (the one column it may set) without touching the budget.
        await tenant.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'acme'")
    finally:
        await tenant.close()
    # The API acting for a tenant token (the agent's session with acting_tenant) is refused by
    # the database too, on update and on creating a child with a budget.
    async with db.transaction():
        await db.execute("SELECT set_config('scheduler.acting_tenant', 'acme', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only the operator"):
            await db.execute("UPDATE scheduler.tenants SET budget = 1000 WHERE name = 'acme'")
    async with db.transaction():
        await db.execute("SELECT set_config('scheduler.acting_tenant', 'acme', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only the operator"):
            await db.execute(
                "INSERT INTO scheduler.tenants (name, parent, budget, budget_currency)"
                " VALUES ('kid', 'acme', 5, 'USD')"
            )
    assert await db.fetchval("SELECT budget FROM scheduler.tenants WHERE name = 'acme'") == 1
    # Over HTTP: a tenant token may read its budget, never set it; the admin token may.
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root))
        _, token = await create_token(db, "acme")
        mine = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as api:
            r = await api.get("/v1/tenants/acme/budget", headers=mine)
            assert r.status_code == 200, r.text
            assert r.json()["budget"] == "1"
            r = await api.put("/v1/tenants/acme/budget", headers=mine, json={"amount": 1000})
            assert r.status_code == 403, r.text
            r = await api.post(
                "/v1/tenants", headers=mine, json={"name": "kid", "parent": "acme", "budget": 5}
            )
            assert r.status_code == 422, r.text
            r = await api.put(
                "/v1/tenants/acme/budget",
                headers=ADMIN,
                json={"amount": "2.5", "currency": "EUR", "period": "total", "action": "freeze"},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["budget"], body["currency"], body["period"], body["action"]) == (
                "2.5",
                "EUR",
                "total",
                "freeze",
            )
            for bad in (
                {"amount": -1},
                {"amount": "lots"},
                {"amount": 1, "currency": "usd"},
                {"amount": 1, "period": "week"},
                {"amount": 1, "action": "kill"},
                {"amount": True},
                {"currency": "USD"},
                {"amount": 1, "owner": "me"},
            ):
                r = await api.put("/v1/tenants/acme/budget", headers=ADMIN, json=bad)
                assert r.status_code == 422, (bad, r.text)
            r = await api.put("/v1/tenants/nobody/budget", headers=ADMIN, json={"amount": 1})
            assert r.status_code == 404, r.text
            r = await api.put("/v1/tenants/acme/budget", headers=ADMIN, json={"amount": None})
            assert r.status_code == 200 and r.json()["budget"] is None, r.text
        tg.cancel_scope.cancel()
    # The CLI refuses bad input with a message.
    code, _, err = await cli(dsn, "tenants", "budget", "acme", "-3")
    assert code != 0
    code, _, err = await cli(dsn, "tenants", "budget", "acme", "abc")
    assert code == 1 and "not a number" in err
    code, _, err = await cli(dsn, "tenants", "budget", "nobody", "3")
    assert code == 1 and "no tenant named 'nobody'" in err
