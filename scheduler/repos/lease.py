"""Nodes from the agent's side: registering at a new epoch, renewing and releasing the
lease, and marking down the nodes whose lease expired."""

from __future__ import annotations

from typing import Any

import asyncpg

from scheduler.db.pool import Conn, Db
from scheduler.db.queries import q


async def lock_node(conn: Conn, name: str) -> None:
    """Serialise registrations of node ``name`` to the end of ``conn``'s transaction."""
    await conn.execute(q("node_lock"), name)


async def get_node(conn: Conn, name: str) -> asyncpg.Record | None:
    """Node ``name``'s row with whether its lease is live, or None."""
    return await conn.fetchrow(q("get_node"), name)


async def register_node(
    conn: Conn,
    name: str,
    *,
    lease_seconds: float,
    version: str,
    driver: str,
    cpu: float,
    memory_bytes: int,
    boot_id: str,
    pid: int,
    labels: dict[str, str],
) -> int:
    """Take node ``name`` at its next epoch; the epoch."""
    epoch = await conn.fetchval(
        q("register_node"),
        name,
        lease_seconds,
        version,
        driver,
        cpu,
        memory_bytes,
        boot_id,
        pid,
        labels,
    )
    return int(epoch)


async def adopt_node_jobs(conn: Conn, name: str, epoch: int) -> int:
    """Move the attempts still recorded on ``name`` to ``epoch``; how many."""
    status = await conn.execute(q("adopt_node_jobs"), name, epoch)
    return int(status.split()[-1])  # "UPDATE n"


async def release_node(db: Db, name: str, epoch: int) -> None:
    """Say the agent of ``name`` at ``epoch`` stopped."""
    await db.execute(q("release_node"), name, epoch)


async def renew_lease(db: Db, name: str, epoch: int, lease_seconds: float) -> Any:
    """Extend the lease of ``name`` at ``epoch``; None when it was lost (marked down or
    taken by another agent)."""
    return await db.fetchval(q("renew_lease"), name, epoch, lease_seconds)


async def expire_nodes(db: Db, grace: float) -> list[asyncpg.Record]:
    """Mark down the nodes whose lease expired more than ``grace`` seconds ago; one row per
    node and attempt ended (node, epoch, job_id, state)."""
    return await db.fetch(q("expire_nodes"), grace)


async def notify_requeued(db: Db) -> None:
    """Tell the dispatchers that jobs were requeued and capacity freed."""
    await db.execute(q("notify_jobs_requeued"))
