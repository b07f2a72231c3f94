"""The API's pool with a bound on the wait for a connection.

The API's pool is small (``api_db_connections``) and its own. When every connection is busy,
a request waits at most :data:`WAIT_SECONDS` and then gets ``503`` with ``Retry-After``,
instead of piling up behind the others for as long as they take.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from scheduler.api.problems import Problem

WAIT_SECONDS = 10.0


class ApiPool:
    """``acquire()`` as asyncpg's, bounded by ``wait_seconds`` (503 past it)."""

    def __init__(self, pool: asyncpg.Pool, wait_seconds: float = WAIT_SECONDS) -> None:
        self.pool = pool
        self.wait_seconds = wait_seconds

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy]:
        try:
            conn = await self.pool.acquire(timeout=self.wait_seconds)
        except TimeoutError as exc:
            raise Problem(
                503,
                f"every database connection of the API ({self.pool.get_max_size()}) has been"
                f" busy for {self.wait_seconds:g} s; retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        try:
            yield conn
        finally:
            await self.pool.release(conn)
