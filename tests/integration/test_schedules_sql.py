"""Schedules in the database: the rules a row must follow (through plain SQL and the store),
the job template checked as a job insert, and tenant roles confined to their own schedules."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from scheduler import schedules
from scheduler.api.bodies import JOB_FIELDS
from scheduler.db.pool import connect
from scheduler.sqlaccess import grant_sql
from tests.integration.test_sql_access import as_role

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)


async def insert(conn: asyncpg.Connection, **values: object) -> None:
    row = {"name": "s", "cron": "* * * * *", "job": {"argv": ["true"]}, **values}
    columns = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await conn.execute(
        f"INSERT INTO scheduler.schedules ({columns}) VALUES ({params})", *row.values()
    )


async def test_a_plain_sql_row_with_defaults(db: asyncpg.Connection) -> None:
    await insert(db, name="nightly", cron=" 0  3 * * mon-fri ", timezone="Europe/Paris")
    row = await db.fetchrow("SELECT * FROM scheduler.schedules")
    assert row is not None
    assert (row["tenant"], row["overlap"], row["enabled"]) == ("default", "skip", True)
    # No planned time yet: an agent plans it (with croniter) on the NOTIFY.
    assert row["next_run_at"] is None and row["error"] is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cron": "* * * *"}, "cron must have 5 fields"),
        ({"cron": "* * * * * *"}, "cron must have 5 fields"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"name": "../x"}, "schedule name '../x' is not valid"),
        ({"overlap": "sometimes"}, "schedule_overlap_valid"),
        ({"job": {"argv": []}}, "the job template is refused: argv must name a program"),
        ({"job": {"cmd": ["true"]}}, "job field 'cmd' cannot be set"),
        ({"job": {"argv": ["true"], "state": "succeeded"}}, "job field 'state' cannot be set"),
        ({"job": {"argv": ["true"], "tenant": "x"}}, "job field 'tenant' cannot be set"),
        ({"job": {"argv": ["true"], "memory_bytes": 5}}, "memory_bytes must be at least"),
        ({"job": {"argv": ["true"], "cpu": "lots"}}, "invalid input syntax for type numeric"),
        ({"job": {"argv": ["true"], "env": {"A=B": "x"}}}, "env key 'A=B'"),
        ({"job": {"argv": ["true"], "cwd": "relative"}}, "cwd must be an absolute path"),
        ({"job": ["true"]}, "job must be a JSON object"),
        ({"job": {"name": "x"}}, "job must name a program in argv"),
        ({"tenant": "nobody-here"}, "unknown tenant 'nobody-here'"),
    ],
)
async def test_a_bad_row_is_refused_with_a_clear_message(
    db: asyncpg.Connection, values: dict[str, object], message: str
) -> None:
    with pytest.raises(asyncpg.PostgresError, match=message):
        await insert(db, **values)
    assert await db.fetchval("SELECT count(*) FROM scheduler.schedules") == 0
    # The template's trial insert left no job behind.
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs") == 0


async def test_an_update_is_checked_too_and_replans(db: asyncpg.Connection) -> None:
    await insert(db)
    await db.execute("UPDATE scheduler.schedules SET next_run_at = now(), error = 'old'")
    with pytest.raises(asyncpg.CheckViolationError, match="pids_max must be at least 1"):
        await db.execute(
            """UPDATE scheduler.schedules SET job = '{"argv": ["true"], "pids_max": 0}'"""
        )
    await db.execute("UPDATE scheduler.schedules SET cron = '*/5 * * * *'")
    row = await db.fetchrow("SELECT next_run_at, error FROM scheduler.schedules")
    assert row is not None
    assert row["next_run_at"] is None and row["error"] is None


async def test_the_template_fields_are_the_api_job_fields(db: asyncpg.Connection) -> None:
    fields = await db.fetchval("SELECT scheduler.schedule_job_fields()")
    # depends_on (migration 0014) is a job's but not a template's: see api/schedules.py.
    assert set(fields) == set(JOB_FIELDS) - {"tenant", "run_at", "depends_on"}
    columns = {
        r["column_name"]
        for r in await db.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'scheduler' AND table_name = 'jobs'"
        )
    }
    assert set(fields) <= columns


async def test_the_store_refuses_what_croniter_refuses(db: asyncpg.Connection) -> None:
    job = {"argv": ["true"]}
    cases = [
        (schedules.ScheduleRequest("a", "61 * * * *", job), "cron", "out of range"),
        (schedules.ScheduleRequest("a", "0 0 31 2 *", job), "cron", "is not valid"),
        (schedules.ScheduleRequest("a", "@daily", job), "cron", "5 fields"),
        (schedules.ScheduleRequest("a", "* * * * *", job, timezone="UTC+3"), "timezone", "UTC"),
        (schedules.ScheduleRequest("a", "* * * * *", job, overlap="x"), "overlap", "skip or"),
        (schedules.ScheduleRequest("A", "* * * * *", job), "name", "not valid"),
        (schedules.ScheduleRequest("a", "* * * * *", {"argv": [""]}), "job", "must not be empty"),
    ]
    for request, field, message in cases:
        with pytest.raises(schedules.ScheduleRefused, match=message) as caught:
            await schedules.add(db, request, NOW)
        assert caught.value.field == field, (request, caught.value)
    assert await db.fetchval("SELECT count(*) FROM scheduler.schedules") == 0
    row = await schedules.add(
        db, schedules.ScheduleRequest("a", "*/10 * * * *", job, timezone="Asia/Kolkata"), NOW
    )
    assert row["next_run_at"] == datetime(2026, 6, 1, 12, 10, tzinfo=UTC)
    with pytest.raises(schedules.ScheduleExists, match="already has a schedule named 'a'"):
        await schedules.add(db, schedules.ScheduleRequest("a", "* * * * *", job), NOW)
    paused = await schedules.set_enabled(db, "default", "a", False, NOW)
    assert not paused["enabled"] and paused["next_run_at"] is None
    later = datetime(2026, 6, 1, 15, 3, tzinfo=UTC)
    resumed = await schedules.set_enabled(db, "default", "a", True, later)
    # Planned from the resume: the due times of the pause are not made up.
    assert resumed["next_run_at"] == datetime(2026, 6, 1, 15, 10, tzinfo=UTC)
    await schedules.remove(db, "default", "a")
    with pytest.raises(schedules.ScheduleNotFound):
        await schedules.remove(db, "default", "a")


async def test_a_tenant_role_sees_and_edits_only_its_schedules(
    db: asyncpg.Connection, dsn: str
) -> None:
    a, b = f"sa-{uuid.uuid4().hex[:6]}", f"sb-{uuid.uuid4().hex[:6]}"
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1), ($2)", a, b)
    await insert(db, tenant=b, name="theirs")
    role, password = await grant_sql(db, a)
    tenant = await connect(as_role(dsn, role, password))
    try:
        await insert(tenant, tenant=a, name="mine", job=json.loads('{"argv": ["date"]}'))
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await insert(tenant, tenant=b, name="sneaky")
        assert [r["name"] for r in await tenant.fetch("SELECT name FROM scheduler.schedules")] == [
            "mine"
        ]
        assert await tenant.execute("UPDATE scheduler.schedules SET enabled = false") == "UPDATE 1"
        assert await tenant.execute("DELETE FROM scheduler.schedules WHERE tenant = $1", b) == (
            "DELETE 0"
        )
        # What the agents write (due times, errors) is theirs alone.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("UPDATE scheduler.schedules SET next_run_at = now()")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await insert(tenant, tenant=a, name="early", next_run_at=NOW)
        # Nor can it make a job that pretends to be a schedule's (it could block a due time):
        # the columns are not granted to tenant roles, and the trigger refuses them besides.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await tenant.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, schedule, schedule_due)"
                " VALUES ($1, ARRAY['true'], 'mine', now())",
                a,
            )
        assert await tenant.execute("DELETE FROM scheduler.schedules") == "DELETE 1"
    finally:
        await tenant.close()
    assert [r["name"] for r in await db.fetch("SELECT name FROM scheduler.schedules")] == ["theirs"]


async def test_a_tenant_keeps_at_most_its_max_schedules(db: asyncpg.Connection, dsn: str) -> None:
    a, b = f"cap-{uuid.uuid4().hex[:6]}", f"capb-{uuid.uuid4().hex[:6]}"
    await db.execute(
        "INSERT INTO scheduler.tenants (name, max_schedules) VALUES ($1, 2), ($2, 1)", a, b
    )
    await insert(db, tenant=b, name="theirs")
    role, password = await grant_sql(db, a)
    tenant = await connect(as_role(dsn, role, password))
    try:
        await insert(tenant, tenant=a, name="one")
        await insert(tenant, tenant=a, name="two")
        with pytest.raises(
            asyncpg.CheckViolationError,
            match=f"tenant '{a}' already has 2 schedules, its limit \\(max_schedules = 2\\)",
        ):
            await insert(tenant, tenant=a, name="three")
        # The cap is the operator's to change, not the tenant's.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tenant.execute("UPDATE scheduler.tenants SET max_schedules = 1000")
        # Removing one makes room again; another tenant's count is its own.
        await tenant.execute("DELETE FROM scheduler.schedules WHERE name = 'one'")
        await insert(tenant, tenant=a, name="three")
    finally:
        await tenant.close()
    with pytest.raises(asyncpg.CheckViolationError, match="max_schedules = 1"):
        await insert(db, tenant=b, name="another")
    with pytest.raises(asyncpg.CheckViolationError, match="tenant_max_schedules_range"):
        await db.execute("UPDATE scheduler.tenants SET max_schedules = -1 WHERE name = $1", a)
    names = await db.fetch("SELECT tenant, name FROM scheduler.schedules ORDER BY tenant, name")
    assert [tuple(r) for r in names] == [(a, "three"), (a, "two"), (b, "theirs")]
