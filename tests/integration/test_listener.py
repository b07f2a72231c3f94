"""The agent survives Postgres dropping its sessions: LISTEN comes back, inserts start at once."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.conftest import agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final

pytestmark = pytest.mark.anyio


async def listening(db: asyncpg.Connection) -> bool:
    """A session of this database (not ours) whose last statement was a LISTEN."""
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'"
        )
    )


async def test_agent_survives_its_sessions_being_terminated(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    # A poll far longer than the test: only a re-established LISTEN starts the job in time.
    settings = agent_settings(
        dsn, state_dir, cgroup_root, poll_interval=600, lease_seconds=10.0, heartbeat_seconds=0.5
    )
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        [row] = await wait_final(db, [await submit(db, ["true"])], timeout=10)
        assert row["state"] == "succeeded"
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 2  # the LISTEN session and the pool's
        with anyio.fail_after(slow(30)):
            while not await listening(db):
                await anyio.sleep(0.1)
        job_id = await submit(db, ["true"])
        [row] = await wait_final(db, [job_id], timeout=10)
        assert row["state"] == "succeeded"
        assert (row["started_at"] - row["submitted_at"]).total_seconds() < 5
        # The heartbeat kept the lease through it.
        assert await db.fetchval("SELECT state FROM scheduler.nodes") == "up"
        tg.cancel_scope.cancel()
