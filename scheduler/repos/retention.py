"""Retention: the usage table's partitions made ahead, and old finished jobs deleted in
batches under a lock one agent at a time holds (in the caller's transaction)."""

from __future__ import annotations

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q


async def make_partitions_ahead(conn: Conn) -> None:
    """Create the usage partitions of the coming months that do not exist yet."""
    await conn.execute(q("usage_partitions_ahead"))


async def usage_partition_count(conn: Conn) -> int:
    """How many partitions scheduler.usage has."""
    return int(await conn.fetchval(q("usage_partition_count")))


async def try_lock(conn: Conn) -> bool:
    """Take the retention lock for the transaction; False when another agent holds it."""
    return await conn.fetchval(q("retention_lock")) is not None


async def delete_old_jobs(conn: Conn, retention: float, batch: int) -> list[asyncpg.Record]:
    """Delete up to ``batch`` jobs that ended more than ``retention`` seconds ago; the rows
    deleted."""
    return await conn.fetch(q("delete_old_jobs"), retention, batch)
