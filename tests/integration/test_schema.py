"""The database refuses bad rows itself, with messages a person can act on."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.db.migrate import migrate, migrations_dir, pending
from scheduler.db.pool import connect
from scheduler.errors import MigrationError
from tests.conftest import slow, with_database

pytestmark = pytest.mark.anyio

BAD_ROWS = [
    ("ARRAY[]::text[]", "'default'", "268435456", "argv must name a program"),
    ("ARRAY['']", "'default'", "268435456", "argv[1] (the program) must not be empty"),
    ("ARRAY['true', NULL]", "'default'", "268435456", "argv must not contain NULL"),
    ("ARRAY['true']", "'default'", "-5", "memory_bytes must be at least 1048576"),
    ("ARRAY['true']", "'nosuch'", "268435456", "unknown tenant 'nosuch'"),
    ("ARRAY['true']", "'../../etc'", "268435456", "is not a valid tenant name"),
    ("ARRAY['true']", "'Acme'", "268435456", "is not a valid tenant name"),
]


@pytest.mark.parametrize(("argv", "tenant", "memory", "message"), BAD_ROWS)
async def test_bad_job_rows_are_refused_and_leave_nothing(
    db: asyncpg.Connection, argv: str, tenant: str, memory: str, message: str
) -> None:
    before = await db.fetchval("SELECT count(*) FROM scheduler.jobs")
    with pytest.raises(asyncpg.PostgresError) as info:
        await db.execute(
            f"INSERT INTO scheduler.jobs (argv, tenant, memory_bytes) VALUES ({argv}, {tenant}, {memory})"
        )
    assert message in str(info.value)
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs") == before


async def test_bad_rows_in_a_batch_refuse_the_whole_statement(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="cpu must be a number of cores"):
        await db.execute(
            "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['true'], 1), (ARRAY['true'], 0)"
        )
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs") == 0


async def test_env_must_map_names_to_strings(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError, match="env key 'A=B'"):
        await db.execute(
            """INSERT INTO scheduler.jobs (argv, env) VALUES (ARRAY['true'], '{"A=B": "x"}')"""
        )
    with pytest.raises(asyncpg.PostgresError, match="env key 'N'"):
        await db.execute(
            """INSERT INTO scheduler.jobs (argv, env) VALUES (ARRAY['true'], '{"N": 1}')"""
        )


async def test_every_column_but_argv_has_a_default(db: asyncpg.Connection) -> None:
    row = await db.fetchrow("INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING *")
    assert row is not None
    assert row["tenant"] == "default"
    assert row["state"] == "queued"
    assert row["desired_state"] == "running"
    assert row["attempts"] == 0


async def test_outcome_columns_cannot_be_forged_on_insert(db: asyncpg.Connection) -> None:
    row = await db.fetchrow(
        "INSERT INTO scheduler.jobs (argv, state, exit_code, cpu_seconds, node)"
        " VALUES (ARRAY['true'], 'succeeded', 0, 0, 'x') RETURNING *"
    )
    assert row is not None
    assert (row["state"], row["exit_code"], row["cpu_seconds"], row["node"]) == (
        "queued",
        None,
        None,
        None,
    )


async def test_bad_tenant_rows_are_refused(db: asyncpg.Connection) -> None:
    for name in ("../x", "a/b", "", "UPPER", "x" * 64, ".hidden"):
        with pytest.raises(asyncpg.CheckViolationError, match="tenant_name_format"):
            await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1)", name)
    with pytest.raises(asyncpg.CheckViolationError, match="tenant_weight_range"):
        await db.execute("INSERT INTO scheduler.tenants (name, weight) VALUES ('w', 0)")
    assert await db.fetchval("SELECT count(*) FROM scheduler.tenants") == 1


async def test_insert_notifies_once_per_statement_after_commit(
    db: asyncpg.Connection, dsn: str
) -> None:
    listener = await connect(dsn)
    got: list[object] = []
    arrived = anyio.Event()

    def on_notify(_c: object, _pid: int, _channel: str, payload: object) -> None:
        got.append(payload)
        arrived.set()

    await listener.add_listener("scheduler_jobs", on_notify)
    try:
        async with db.transaction():
            await db.execute(
                "INSERT INTO scheduler.jobs (argv) SELECT ARRAY['true'] FROM generate_series(1, 50)"
            )
            await anyio.sleep(0.05)
            assert got == []  # nothing before commit
        with anyio.fail_after(slow(5)):
            await arrived.wait()
        await anyio.sleep(0.05)
        assert got == ["queued"]
    finally:
        await listener.close()


async def test_cancelling_a_queued_job_is_done_by_the_database(db: asyncpg.Connection) -> None:
    job_id = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
    )
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_id)
    row = await db.fetchrow("SELECT state, finished_at FROM scheduler.jobs WHERE id = $1", job_id)
    assert row is not None
    assert row["state"] == "cancelled"
    assert row["finished_at"] is not None
    with pytest.raises(asyncpg.CheckViolationError, match="already finished"):
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'running' WHERE id = $1", job_id
        )


async def test_usage_rows_are_append_only(db: asyncpg.Connection) -> None:
    job_id = await db.fetchval(
        "INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id"
    )
    await db.execute(
        "INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start, period_end,"
        " cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes, final)"
        " VALUES ($1, 1, 1, 'default', 'n', now(), now(), 0, 0, 0, 0, 0, true)",
        job_id,
    )
    for statement in (
        "UPDATE scheduler.usage SET cpu_seconds = 1",
        "DELETE FROM scheduler.usage",
        "TRUNCATE scheduler.usage",
    ):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await db.execute(statement)


async def test_migrations_are_recorded_and_concurrent_runs_are_safe(
    pg_admin_dsn: str,
) -> None:
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute("DROP DATABASE IF EXISTS migrate_race")
    await admin.execute("CREATE DATABASE migrate_race")
    try:
        target = with_database(pg_admin_dsn, "migrate_race")
        conns = [await connect(target) for _ in range(4)]
        results: list[list[int]] = []

        async def run(c: asyncpg.Connection) -> None:
            results.append(await migrate(c))

        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(run, c)
        assert sorted(len(r) for r in results)[-1] >= 1
        assert sum(len(r) for r in results) == len(max(results, key=len))
        assert await pending(conns[0]) == []
        assert (
            await conns[0].fetchval("SELECT count(*) FROM scheduler.tenants WHERE name = 'default'")
            == 1
        )
        for c in conns:
            await c.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS migrate_race WITH (FORCE)")
        await admin.close()


async def test_a_changed_definition_is_applied_once_after_the_numbered_migrations(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    """migrations/definitions: a function kept at its file's text. Applied when the text
    changes (not on every start), after the numbered files, and listed as pending until then."""
    tree = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), tree)
    assert await migrate(db, tree) == []  # the test database is current
    claim = await db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'claim_jobs'")
    assert "reasons_noted_at" in claim  # the definition's text, not 0017's
    (tree / "definitions" / "probe.sql").write_text(
        "CREATE OR REPLACE FUNCTION scheduler.definition_probe() RETURNS int"
        " LANGUAGE sql AS $$ SELECT 1 $$;\n"
    )
    assert await pending(db, tree) == ["probe"]
    await migrate(db, tree)
    assert await db.fetchval("SELECT scheduler.definition_probe()") == 1
    applied = await db.fetchval(
        "SELECT applied_at FROM scheduler.schema_definitions WHERE name = 'probe'"
    )
    await migrate(db, tree)  # unchanged: not applied again
    assert applied == await db.fetchval(
        "SELECT applied_at FROM scheduler.schema_definitions WHERE name = 'probe'"
    )
    (tree / "definitions" / "probe.sql").write_text(
        "CREATE OR REPLACE FUNCTION scheduler.definition_probe() RETURNS int"
        " LANGUAGE sql AS $$ SELECT 2 $$;\n"
    )
    assert await pending(db, tree) == ["probe"]
    await migrate(db, tree)
    assert await db.fetchval("SELECT scheduler.definition_probe()") == 2
    assert await pending(db, tree) == []
    (tree / "definitions" / "Bad Name.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"definition files are named name\.sql"):
        await migrate(db, tree)
