"""Tenant sessions that hold up the agent's own writes are ended.

A tenant's SQL role may lock its own jobs' rows (``SELECT ... FOR UPDATE``, or an UPDATE of
``desired_state`` in a transaction left open) and turn its timeouts off (``statement_timeout``
and ``idle_in_transaction_session_timeout`` are role defaults a session may SET). The agent's
recording of a batch of attempts' ends then waits on that row, and every other tenant's
completions wait with it. Once per heartbeat the agent ends the tenant sessions that have
blocked one of its sessions for longer than :data:`BLOCK_SECONDS`. Ending a session needs
superuser or membership of ``pg_signal_backend``; without it the agent logs a warning.
"""

from __future__ import annotations

import asyncpg
import structlog

from scheduler.db.outage import DB_ERRORS
from scheduler.repos import control

log = structlog.get_logger(__name__)
# How long an agent's statement may wait for a lock a tenant's session holds.
BLOCK_SECONDS = 5.0


async def end_tenant_blockers(
    pool: asyncpg.Pool, node: str, after_seconds: float = BLOCK_SECONDS
) -> list[int]:
    """End the tenant sessions blocking this node's agent sessions; return their pids."""
    try:
        rows = await control.end_tenant_blockers(pool, f"scheduler {node}", after_seconds)
    except DB_ERRORS as exc:
        log.warning("tenant_blockers_check_failed", error=repr(exc))
        return []
    for row in rows:
        log.warning(
            "tenant_session_ended",
            pid=row["pid"],
            role=row["role"],
            ended=row["ended"],
            reason=f"held a lock the agent waited for more than {after_seconds:g} s",
        )
    return [int(r["pid"]) for r in rows if r["ended"]]
