"""Graceful cancel on a real agent (issue 18, item 4): SIGTERM first, the kill once the job's
kill_grace_seconds have passed; --now and a frozen job skip the grace; the time limit uses it
too; an agent restarted during the grace still kills on time, with one closing usage row."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from scheduler.agent.grace import TERM_FILE
from scheduler.rundirs import run_dir_for
from scheduler.sqlaccess import grant_sql
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import output, submit, wait_final, wait_state
from tests.integration.test_control import cli

pytestmark = pytest.mark.anyio

# Says "ready" once its trap is set, then waits; SIGTERM makes it write and exit.
HANDLES_TERM = [
    "sh",
    "-c",
    "trap 'echo term-handled; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
]
# Ignores SIGTERM (its sleeps inherit the ignored signal): only the kill ends it.
IGNORES_TERM = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]


async def wait_ready(agent: AgentHandle, job_id: int) -> None:
    with anyio.fail_after(slow(20)):
        while "ready" not in output(agent, job_id):
            await anyio.sleep(0.02)


async def cancel(db: asyncpg.Connection, job_id: int) -> float:
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_id)
    return time.monotonic()


async def stopped(db: asyncpg.Connection, agent: AgentHandle) -> None:
    """Stop an in-process agent and wait until it let go of its node name (its jobs run on)."""
    agent.stop()
    with anyio.fail_after(slow(20)):
        while await db.fetchval("SELECT pid FROM scheduler.nodes WHERE name = 'test-node'"):
            await anyio.sleep(0.02)


async def one_closing_row(db: asyncpg.Connection, job: asyncpg.Record) -> None:
    """The job's usage rows: numbered 1..n, exactly one closing row, summing to its totals."""
    rows = await db.fetch("SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", job["id"])
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["final"] for r in rows].count(True) == 1 and rows[-1]["final"]
    assert sum(r["cpu_seconds"] for r in rows) == job["cpu_seconds"]


async def test_cancel_sends_sigterm_and_the_handler_writes_its_file(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    job_id = await submit(db, HANDLES_TERM)
    await wait_ready(agent, job_id)
    asked = await cancel(db, job_id)
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "cancelled"
    # The handler ran, and the job ended by itself well inside its 10 s grace.
    assert "term-handled" in output(agent, job_id)
    assert time.monotonic() - asked < slow(8)
    await one_closing_row(db, row)


async def test_a_job_ignoring_sigterm_is_killed_after_its_grace(
    db: asyncpg.Connection, agent: AgentHandle, cgroup_root: str
) -> None:
    job_id = await submit(db, IGNORES_TERM, kill_grace_seconds=2)
    await wait_ready(agent, job_id)
    asked = await cancel(db, job_id)
    await anyio.sleep(1.0)
    # Half-way through its grace it still runs.
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id) == "running"
    [row] = await wait_final(db, [job_id])
    took = time.monotonic() - asked
    assert row["state"] == "cancelled"
    assert 2.0 <= took < 2.0 + slow(5), took
    await one_closing_row(db, row)


async def test_cancel_now_skips_the_grace_cli_and_http(
    dsn: str, db: asyncpg.Connection, agent: AgentHandle
) -> None:
    # CLI: a plain cancel first (SIGTERM, ignored), then --now while the 60 s grace runs.
    first = await submit(db, IGNORES_TERM, kill_grace_seconds=60)
    await wait_ready(agent, first)
    await cancel(db, first)
    await anyio.sleep(0.5)
    asked = time.monotonic()
    code, _out, err = await cli(dsn, "cancel", "--now", str(first))
    assert code == 0, err
    [row] = await wait_final(db, [first])
    assert row["state"] == "cancelled"
    assert row["kill_grace_seconds"] == 0
    assert time.monotonic() - asked < slow(5)
    await one_closing_row(db, row)
    # HTTP: POST /v1/jobs/{id}/cancel?now=true, straight away.
    second = await submit(db, IGNORES_TERM, kill_grace_seconds=60)
    await wait_ready(agent, second)
    headers = {"Authorization": f"Bearer {agent.settings.http.admin_token}"}
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as api:
        bad = await api.post(f"/v1/jobs/{second}/cancel?now=yes", headers=headers)
        assert bad.status_code == 400
        asked = time.monotonic()
        response = await api.post(f"/v1/jobs/{second}/cancel?now=true", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["desired_state"] == "cancelled"
    [row] = await wait_final(db, [second])
    assert row["state"] == "cancelled"
    assert time.monotonic() - asked < slow(5)


async def test_a_frozen_job_is_killed_at_once(db: asyncpg.Connection, agent: AgentHandle) -> None:
    job_id = await submit(db, HANDLES_TERM, kill_grace_seconds=60)
    await wait_ready(agent, job_id)
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'frozen' WHERE id = $1", job_id)
    await wait_state(db, job_id, "frozen", timeout=10)
    asked = await cancel(db, job_id)
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "cancelled"
    assert time.monotonic() - asked < slow(5)
    # Killed, not asked: a frozen process would have acted on SIGTERM only once thawed.
    assert "term-handled" not in output(agent, job_id)
    await one_closing_row(db, row)


async def test_time_limit_sends_sigterm_then_kills_after_the_jobs_grace(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    handled = await submit(db, HANDLES_TERM, timeout_seconds=1, kill_grace_seconds=30)
    ignoring = await submit(db, IGNORES_TERM, timeout_seconds=1, kill_grace_seconds=1)
    started = time.monotonic()
    rows = await wait_final(db, [handled, ignoring])
    took = time.monotonic() - started
    assert [r["state"] for r in rows] == ["timed_out", "timed_out"]
    assert "term-handled" in output(agent, handled)
    # The ignoring job went at its limit plus its own 1 s grace (the node's cap is 600 s).
    assert took < 2.0 + slow(6), took
    for row in rows:
        await one_closing_row(db, row)


async def test_an_agent_restarted_during_the_grace_kills_when_it_ends(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root)
    async with anyio.create_task_group() as tg:
        first = await start_agent(tg, settings)
        job_id = await submit(db, IGNORES_TERM, kill_grace_seconds=6)
        await wait_ready(first, job_id)
        asked = await cancel(db, job_id)
        term_file = run_dir_for(settings.paths.monitors_dir, job_id, 1) / TERM_FILE
        with anyio.fail_after(slow(10)):
            while not term_file.exists():
                await anyio.sleep(0.02)
        await stopped(db, first)
        await anyio.sleep(0.5)
        assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id) == (
            "running"
        )
        second = await start_agent(tg, settings)
        [row] = await wait_final(db, [job_id])
        took = time.monotonic() - asked
        second.stop()
    assert row["state"] == "cancelled"
    # Killed when the first agent's grace ended, not a whole new grace after the restart.
    assert 6.0 <= took < 6.0 + slow(6), took
    await one_closing_row(db, row)


async def test_an_agent_restarted_in_a_time_limit_grace_does_not_wait_a_new_limit(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root)
    async with anyio.create_task_group() as tg:
        first = await start_agent(tg, settings)
        job_id = await submit(db, IGNORES_TERM, timeout_seconds=8, kill_grace_seconds=2)
        term_file = run_dir_for(settings.paths.monitors_dir, job_id, 1) / TERM_FILE
        with anyio.fail_after(slow(30)):
            while not term_file.exists():
                await anyio.sleep(0.02)
        termed = time.monotonic()
        await stopped(db, first)
        second = await start_agent(tg, settings)
        [row] = await wait_final(db, [job_id])
        took = time.monotonic() - termed
        second.stop()
    assert row["state"] == "timed_out"
    # The adopted attempt's clock starts again at zero, but its limit was reached already.
    assert took < 2.0 + slow(4), took
    await one_closing_row(db, row)


@pytest.fixture
async def tenant_db(dsn: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A tenant's own SQL role (as `scheduler tenants grant-sql` makes it)."""
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    role, password = await grant_sql(db, "acme")
    conn = await asyncpg.connect(dsn, user=role, password=password)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_tenant_sets_its_grace_and_cancels_now_in_sql(
    db: asyncpg.Connection, tenant_db: asyncpg.Connection
) -> None:
    job_id = await tenant_db.fetchval(
        "INSERT INTO scheduler.jobs (tenant, argv, kill_grace_seconds, run_at)"
        " VALUES ('acme', '{true}', 30, now() + interval '1 hour') RETURNING id"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await tenant_db.execute(
            "UPDATE scheduler.jobs SET kill_grace_seconds = 3601 WHERE id = $1", job_id
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await tenant_db.execute(
            "UPDATE scheduler.jobs SET kill_grace_seconds = -1 WHERE id = $1", job_id
        )
    await tenant_db.execute(
        "UPDATE scheduler.jobs SET desired_state = 'cancelled', kill_grace_seconds = 0"
        " WHERE id = $1",
        job_id,
    )
    row = await db.fetchrow("SELECT * FROM scheduler.jobs WHERE id = $1", job_id)
    assert row is not None
    assert (row["state"], row["kill_grace_seconds"]) == ("cancelled", 0)
    # A schedule's template may carry it (and is checked like an insert).
    await tenant_db.execute(
        "INSERT INTO scheduler.schedules (name, tenant, cron, job) VALUES ('s', 'acme',"
        ' \'* * * * *\', \'{"argv": ["true"], "kill_grace_seconds": 5}\')'
    )
    with pytest.raises(asyncpg.PostgresError, match="kill_grace"):
        await tenant_db.execute(
            "INSERT INTO scheduler.schedules (name, tenant, cron, job) VALUES ('t', 'acme',"
            ' \'* * * * *\', \'{"argv": ["true"], "kill_grace_seconds": 7200}\')'
        )
