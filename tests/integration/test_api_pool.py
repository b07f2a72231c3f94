"""The API's own pool waits a bounded time for a connection: a 503 with Retry-After past it,
never a request queued for as long as the others take."""

from __future__ import annotations

import time

import pytest

from scheduler.api.dbwait import ApiPool
from scheduler.api.problems import Problem
from scheduler.db.pool import create_pool

pytestmark = pytest.mark.anyio


async def test_a_busy_api_pool_answers_503_after_its_wait(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        api = ApiPool(pool, wait_seconds=0.3)
        async with api.acquire() as held:
            assert await held.fetchval("SELECT 1") == 1
            started = time.monotonic()
            with pytest.raises(Problem) as caught:
                async with api.acquire():
                    pass
            assert 0.25 <= time.monotonic() - started < 5
        assert caught.value.status == 503
        assert caught.value.headers == {"Retry-After": "1"}
        assert "(1)" in caught.value.detail
        # Given back: the next request gets the connection at once.
        async with api.acquire() as conn:
            assert await conn.fetchval("SELECT 2") == 2
        # A failing statement still gives its connection back.
        with pytest.raises(ZeroDivisionError):
            async with api.acquire():
                raise ZeroDivisionError
        async with api.acquire() as conn:
            assert await conn.fetchval("SELECT 3") == 3
    finally:
        await pool.close()
