"""The nodes as the operator's commands see them: list, drain, undrain, forget. The SQL is in
scheduler/db/queries.sql; the lease and fencing statements of a running agent stay with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scheduler.db.queries import q

if TYPE_CHECKING:
    from scheduler.db.pool import Conn


async def list_nodes(conn: Conn) -> list[Any]:
    """Every node with its state, lease, capacity and load (running and frozen jobs)."""
    return list(await conn.fetch(q("list_nodes")))


async def set_drained(conn: Conn, name: str, drained: bool) -> Any | None:
    """Drain or undrain node ``name``; its row (name, state, drained, labels), or None when
    there is no such node. Undraining wakes the dispatchers, so the node may claim at once."""
    row = await conn.fetchrow(q("set_node_drained"), name, drained)
    if row is not None and not drained:
        await conn.execute(q("notify_node_undrained"))
    return row


async def forget(conn: Conn, name: str) -> bool:
    """Remove node ``name`` when it is down and runs nothing; False when it is not such a
    node (up, unknown, or still holding running jobs)."""
    return await conn.fetchval(q("forget_node"), name) is not None
