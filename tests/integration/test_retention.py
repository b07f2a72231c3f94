"""Retention on a real agent (issue 18, item 5): old output and old finished job rows go, the
rest stays; one agent sweeps rows at a time; usage is partitioned by month, months detach."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.attempts import Attempts
from scheduler.agent.retention import Retention
from scheduler.db.migrate import migrate
from scheduler.db.pool import connect
from scheduler.db.queries import q
from scheduler.rundirs import run_dir_for
from scheduler.sqlaccess import grant_sql
from tests.conftest import AgentHandle, agent_settings, slow, start_agent, with_database
from tests.integration.test_agent import submit, wait_final

pytestmark = pytest.mark.anyio
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
HOUR = 3600


async def as_agent(db: asyncpg.Connection) -> None:
    """Let this session write the agent's columns (finished_at), as the tests' clock."""
    await db.execute("SELECT set_config('scheduler.writer', 'agent', false)")


async def cancelled_unrun(db: asyncpg.Connection, ended_ago: float) -> int:
    """A job cancelled while queued (it never ran: no billing rows), ended ``ended_ago`` s ago."""
    job_id = await submit(db, ["true"], run_at=datetime(2999, 1, 1, tzinfo=UTC))
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_id)
    await db.execute(
        "UPDATE scheduler.jobs SET finished_at = now() - make_interval(secs => $2) WHERE id = $1",
        job_id,
        ended_ago,
    )
    return job_id


def age(directory: Path, seconds: float) -> None:
    """Make every file of ``directory`` (and itself) last written ``seconds`` ago."""
    then = time.time() - seconds
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (then, then), follow_symlinks=False)


@pytest.fixture
async def retaining_agent(
    dsn: str, state_dir: Path, cgroup_root: str
) -> AsyncIterator[AgentHandle]:
    settings = agent_settings(
        dsn,
        state_dir,
        cgroup_root,
        output_retention="1h",
        job_retention="1h",
        retention_interval_seconds=0.2,
    )
    async with anyio.create_task_group() as tg:
        yield await start_agent(tg, settings)
        tg.cancel_scope.cancel()


async def test_retention_removes_only_what_is_old(
    db: asyncpg.Connection, retaining_agent: AgentHandle
) -> None:
    ran_old = await submit(db, ["sh", "-c", "echo old"])
    ran_new = await submit(db, ["sh", "-c", "echo new"])
    await wait_final(db, [ran_old, ran_new])
    await as_agent(db)
    unrun_old = await cancelled_unrun(db, 2 * HOUR)
    unrun_new = await cancelled_unrun(db, 10)
    await db.execute(
        "INSERT INTO scheduler.idempotency_keys (tenant, key, request_hash, job_id)"
        " VALUES ('default', 'k1', 'h', $1)",
        unrun_old,
    )
    await db.execute(
        "UPDATE scheduler.jobs SET finished_at = now() - interval '2 hours' WHERE id = $1",
        ran_old,
    )
    runs = retaining_agent.settings.paths.runs_dir
    old_dir, new_dir = run_dir_for(runs, ran_old, 1), run_dir_for(runs, ran_new, 1)
    assert (old_dir / "stdout").read_text() == "old\n"
    age(old_dir, 2 * HOUR)
    age(new_dir, HOUR - 60)  # not old enough yet
    with anyio.fail_after(slow(20)):
        while old_dir.exists() or await db.fetchval(
            "SELECT count(*) FROM scheduler.jobs WHERE id = $1", unrun_old
        ):
            await anyio.sleep(0.05)
    assert (new_dir / "stdout").read_text() == "new\n"
    left = {r["id"] for r in await db.fetch("SELECT id FROM scheduler.jobs")}
    # The old job that ran keeps its row: its billing rows reference it (usage is kept).
    assert left == {ran_old, ran_new, unrun_new}
    assert await db.fetchval("SELECT count(*) FROM scheduler.idempotency_keys") == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM scheduler.usage WHERE job_id = ANY($1)", [ran_old, ran_new]
        )
        == 2
    )


async def test_one_agent_sweeps_rows_and_no_tenant_can_hold_it_off(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await as_agent(db)
    old = [await cancelled_unrun(db, 2 * HOUR) for _ in range(3)]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        sweeper = Retention(
            pool,
            runs_dir=tmp_path,
            attempts=Attempts(),
            output_retention=None,
            job_retention=HOUR,
            interval=1,
        )
        # Another agent's sweep holds the lock row: this one skips.
        async with db.transaction():
            await db.execute("SELECT 1 FROM scheduler.retention_lock FOR UPDATE")
            assert (await sweeper.sweep()).jobs == 0
        # A tenant role may not take the lock (nor an advisory lock that would matter).
        await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
        role, password = await grant_sql(db, "acme")
        tenant = await asyncpg.connect(dsn, user=role, password=password)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await tenant.execute("SELECT 1 FROM scheduler.retention_lock FOR UPDATE")
        finally:
            await tenant.close()
        swept = await sweeper.sweep()
        assert swept.jobs == 3
        assert swept.partitions >= 4  # this month, the next two, the default
        assert await db.fetchval("SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1)", old) == 0
    finally:
        await pool.close()


async def insert_usage(
    db: asyncpg.Connection, job_id: int, seq: int, start: datetime, *, final: bool = False
) -> str:
    """Insert one billing row; return what happened to it ('INSERT 0 1' or 'INSERT 0 0')."""
    return str(
        await db.execute(
            "INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,"
            " period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,"
            " io_write_bytes, final) VALUES ($1, $2, 1, 'default', 'n', $3,"
            " $3::timestamptz + interval '10 seconds', 1.5, 0, 0, 0, 0, $4)",
            job_id,
            seq,
            start,
            final,
        )
    )


async def test_usage_across_two_months_lands_in_two_partitions_and_one_detaches(
    db: asyncpg.Connection,
) -> None:
    job_id = await submit(db, ["true"], run_at=datetime(2999, 1, 1, tzinfo=UTC))
    await db.execute("SELECT scheduler.usage_partition('2026-10-01')")
    await db.execute("SELECT scheduler.usage_partition('2026-11-01')")
    october, november = (
        datetime(2026, 10, 31, 23, 59, 55, tzinfo=UTC),
        datetime(2026, 11, 1, 0, 0, 5, tzinfo=UTC),
    )
    assert await insert_usage(db, job_id, 1, october) == "INSERT 0 1"
    assert await insert_usage(db, job_id, 2, november, final=True) == "INSERT 0 1"
    # The old guarantees hold across months: a seq already billed, or a second closing row
    # of the attempt, in another month, is dropped.
    assert await insert_usage(db, job_id, 1, november) == "INSERT 0 0"
    assert await insert_usage(db, job_id, 3, october, final=True) == "INSERT 0 0"
    placed = await db.fetch(
        "SELECT tableoid::regclass::text AS part, seq FROM scheduler.usage ORDER BY seq"
    )
    assert [(r["part"], r["seq"]) for r in placed] == [
        ("scheduler.usage_2026_10", 1),
        ("scheduler.usage_2026_11", 2),
    ]
    # Append-only on every month too.
    for statement in (
        "DELETE FROM scheduler.usage_2026_10",
        "UPDATE scheduler.usage_2026_10 SET cpu_seconds = 0",
        "TRUNCATE scheduler.usage_2026_10",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    # The billing export reads through the parent.
    rows = await db.fetch(
        q("billing_usage"),
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
        None,
    )
    assert sum(r["cpu_seconds"] for r in rows) == Decimal("3.0")
    # The archive procedure: detach October, keep it as a table of its own, then drop it.
    await db.execute("ALTER TABLE scheduler.usage DETACH PARTITION scheduler.usage_2026_10")
    assert await db.fetchval("SELECT count(*) FROM scheduler.usage") == 1
    assert await db.fetchval("SELECT count(*) FROM scheduler.usage_2026_10") == 1
    await db.execute("DROP TABLE scheduler.usage_2026_10")
    assert [r["seq"] for r in await db.fetch("SELECT seq FROM scheduler.usage")] == [2]


async def test_migration_keeps_existing_usage_in_monthly_partitions(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    name = f"mig_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if int(path.name[:4]) < 15:
            shutil.copy(path, before / path.name)
    conn = await connect(with_database(pg_admin_dsn, name))
    try:
        await migrate(conn, before)
        job_id = await submit(conn, ["true"])
        for seq, start in enumerate(
            (datetime(2026, 9, 30, 23, 0, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)), 1
        ):
            await insert_usage(conn, job_id, seq, start, final=seq == 2)
        recent = await conn.fetchval("SELECT cpu_seconds FROM scheduler.tenant_recent_cpu")
        await migrate(conn)
        placed = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, seq, cpu_seconds FROM scheduler.usage"
            " ORDER BY seq"
        )
        assert [(r["part"], r["seq"]) for r in placed] == [
            ("scheduler.usage_2026_09", 1),
            ("scheduler.usage_2026_10", 2),
        ]
        # Copying did not count the rows into fair share again.
        assert await conn.fetchval("SELECT cpu_seconds FROM scheduler.tenant_recent_cpu") == recent
        assert await conn.fetchval(
            "SELECT cpu_seconds FROM scheduler.usage_daily ORDER BY time LIMIT 1"
        ) == Decimal("1.5")
    finally:
        await conn.close()
        admin = await asyncpg.connect(pg_admin_dsn)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
