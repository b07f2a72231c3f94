"""release_claims: an attempt a node could not start for a fault of its own goes back to the
queue uncounted, unless it already has usage rows (then it is recorded as usual)."""

from __future__ import annotations

import asyncpg
import pytest

from scheduler.db.queries import q
from tests.conftest import write_as_agent

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    # These tests stage job states by hand, as only the agent may write them.
    await write_as_agent(db)


async def claimed(db: asyncpg.Connection) -> int:
    job = await db.fetchval("INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true']) RETURNING id")
    await db.execute(
        "UPDATE scheduler.jobs SET state = 'running', node = 'n1', attempts = 1, node_epoch = 3,"
        " started_at = now() WHERE id = $1",
        job,
    )
    return int(job)


async def test_release_puts_the_attempt_back_uncounted(db: asyncpg.Connection) -> None:
    job = await claimed(db)
    rows = await db.fetch(q("release_claims"), [job], [1], ["not started on node n1: full"])
    assert [r["id"] for r in rows] == [job]
    row = await db.fetchrow("SELECT * FROM scheduler.jobs WHERE id = $1", job)
    assert row is not None
    assert (row["state"], row["attempts"], row["node"], row["node_epoch"]) == (
        "queued",
        0,
        None,
        None,
    )
    assert row["started_at"] is None and row["error"] == "not started on node n1: full"
    # A second release of the same attempt (a retried batch) changes nothing.
    assert await db.fetch(q("release_claims"), [job], [1], ["again"]) == []


async def test_an_attempt_with_usage_rows_is_not_released(db: asyncpg.Connection) -> None:
    job = await claimed(db)
    await db.execute(
        "INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,"
        " period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,"
        " io_write_bytes) VALUES ($1, 1, 1, 'default', 'n1', now(), now(), 0.001, 0, 0, 0, 0)",
        job,
    )
    assert await db.fetch(q("release_claims"), [job], [1], ["full"]) == []
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job) == "running"
