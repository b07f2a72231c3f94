"""What the agent reads from its database while it starts (scheduler/agent/service.py)."""

from __future__ import annotations

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.jobs import Job

# A pool runs one statement on a connection of its own: start-up needs no transaction.
Querier = Conn | asyncpg.Pool


async def database_identity(conn: Querier) -> str:
    """Who this database is (its instance id and oid), written into every runtime record of
    the agent's attempts (runtime/records.py)."""
    return str(await conn.fetchval(q("database_identity")))


async def active_on_node(conn: Querier, node: str) -> list[Job]:
    """The attempts ``node`` had started when it last stopped, to re-adopt or record."""
    return [Job.from_row(row) for row in await conn.fetch(q("active_on_node"), node)]
