"""The dedicated LISTEN connection, re-established when Postgres drops it.

Notifications sent while the connection is down are lost (NOTIFY is not durable): after each
reconnection every subscriber is woken once, as if everything had changed, and the safety
polls cover the gap until then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import asyncpg
import structlog

from scheduler.backoff import Backoff
from scheduler.db.pool import DB_ERRORS, connect
from scheduler.errors import DatabaseError

log = structlog.get_logger(__name__)
Subscribe = Callable[[asyncpg.Connection], Awaitable[None]]
# Reconnection backoff (scheduler/backoff.py): from the first delay, growing, up to the last.
FIRST_DELAY = 0.1
MAX_DELAY = 5.0
# How often a silent connection is checked (a dropped socket may not wake anything).
CHECK_SECONDS = 1.0
# DatabaseError: connect() wraps a refused connection (the server is down or still starting),
# which is what a reconnection meets first.
RECONNECT_ERRORS: tuple[type[Exception], ...] = (DatabaseError, *DB_ERRORS)


class Listener:
    """Owns one connection that the ``subscribers`` add their listeners to."""

    def __init__(
        self, dsn: str, subscribers: list[Subscribe], on_reconnect: list[Callable[[], None]]
    ) -> None:
        self._dsn = dsn
        self._subscribers = subscribers
        self._on_reconnect = on_reconnect
        self._lost = anyio.Event()
        self.conn: asyncpg.Connection | None = None
        self.reconnections = 0

    async def connect(self) -> None:
        """Open the connection and subscribe everyone (at start-up: errors propagate)."""
        conn = await connect(self._dsn)
        try:
            for subscribe in self._subscribers:
                await subscribe(conn)
        except BaseException:
            conn.terminate()
            raise
        self._lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self.conn = conn

    async def run(self) -> None:
        """Watch the connection; reconnect with backoff whenever it is lost."""
        while True:
            with anyio.move_on_after(CHECK_SECONDS):
                await self._lost.wait()
            if self.conn is not None and not self.conn.is_closed() and not self._lost.is_set():
                continue
            log.warning("listen_connection_lost")
            if self.conn is not None:
                self.conn.terminate()
                self.conn = None
            backoff = Backoff(FIRST_DELAY, MAX_DELAY)
            while self.conn is None:
                try:
                    await self.connect()
                except RECONNECT_ERRORS as exc:
                    delay = backoff.next()
                    log.warning("listen_reconnect_failed", error=repr(exc), retry_in_seconds=delay)
                    await anyio.sleep(delay)
            self.reconnections += 1
            log.info("listen_reconnected", reconnections=self.reconnections)
            for wake in self._on_reconnect:
                wake()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    def terminate(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            self.conn.terminate()
