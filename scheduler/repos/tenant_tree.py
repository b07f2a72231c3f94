"""The tenant tree as the agent builds cgroups from it: every tenant with its path and
settings, or one tenant's chain from the root."""

from __future__ import annotations

import asyncpg

from scheduler.db.pool import Db
from scheduler.db.queries import q


async def tenant_tree(db: Db) -> list[asyncpg.Record]:
    """Every tenant with its cgroup path, limits, frozen flag and budget freeze."""
    return await db.fetch(q("tenant_tree"))


async def tenant_chain(db: Db, tenant: str) -> list[asyncpg.Record]:
    """``tenant`` and its ancestors, root first, with their limits (empty: no such tenant)."""
    return await db.fetch(q("tenant_chain"), tenant)
