"""What /readyz checks: the database answers, the schema is current, the cgroup root is ours."""

from __future__ import annotations

import os

import anyio
import asyncpg

from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath
from scheduler.config import Settings
from scheduler.db.migrate import pending
from scheduler.db.pool import DB_ERRORS


async def readiness(pool: asyncpg.Pool, settings: Settings, driver: CgroupDriver) -> list[str]:
    """The reasons this agent cannot do its work now (empty when ready)."""
    reasons: list[str] = []
    try:
        with anyio.fail_after(2):
            async with pool.acquire() as conn:
                missing = await pending(conn)
        if missing:
            reasons.append(f"database migrations {missing} are not applied")
    except DB_ERRORS as exc:
        reasons.append(f"database unreachable: {exc or type(exc).__name__}")
    if not await async_driver(driver).exists(CgroupPath(())):
        reasons.append(f"cgroup root {settings.cgroups.root!r} is missing")
    for directory in (settings.paths.runs_dir, settings.paths.monitors_dir):
        if not os.access(directory, os.W_OK):
            reasons.append(f"state directory {directory} is not writable")
    return reasons
