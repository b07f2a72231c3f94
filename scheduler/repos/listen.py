"""The notification channels the agent listens on, named once on this side of the database
(the NOTIFYs are in db/queries.sql and the migrations' triggers). Each subscription is asyncpg's
LISTEN on the agent's dedicated connection (agent/listener.py re-subscribes after a drop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

# A job was inserted or put back in the queue (payload ignored).
JOBS = "scheduler_jobs"
# Capacity was freed: jobs ended, failed or were lost.
DONE = "scheduler_done"
# A job's desired state or a tenant's settings changed (``node:<name>`` or ``tenants``).
CONTROL = "scheduler_control"
# A schedule was added, changed or removed.
SCHEDULES = "scheduler_schedules"
# A job ended (the payload is its id only: migration 0014; waiters read the row under RLS).
JOB_DONE = "scheduler_job_done"

# asyncpg's listener callback: (connection, sender pid, channel, payload).
Callback = Callable[[Any, int, str, object], None]


async def listen(conn: asyncpg.Connection, channel: str, callback: Callback) -> None:
    """Call ``callback`` on every NOTIFY of ``channel`` that reaches ``conn``."""
    await conn.add_listener(channel, callback)
