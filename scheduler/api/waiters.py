"""Waiting for jobs to end without a database connection per waiter.

``GET /v1/jobs/{id}?wait=N`` must not hold one of the API's few pool connections for up to a
minute: 10,000 waiting requests would starve every other request. One connection per API
process LISTENs on ``scheduler_job_done`` (migration 0014: the payload is the id of a job
that ended) and wakes the requests waiting on that id, in memory. At most ``max_waiters``
requests wait at once; past that a request is answered at once with the job as it is (it
still holds an HTTP connection, which :mod:`scheduler.api.limits` bounds, not a database one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

import anyio
import asyncpg
import structlog

from scheduler.errors import DatabaseError
from scheduler.repos import listen

log = structlog.get_logger(__name__)

RECONNECT_SECONDS = 1.0


class JobDoneHub:
    """One LISTEN connection fanning ``scheduler_job_done`` out to in-memory waiters."""

    def __init__(
        self, connect: Callable[[], Awaitable[asyncpg.Connection]], max_waiters: int = 256
    ) -> None:
        self._connect = connect
        self.max_waiters = max_waiters
        self._waiters: dict[int, set[anyio.Event]] = {}
        self._count = 0
        # True while the LISTEN is in place: a waiter registered then hears every end
        # committed afterwards.
        self.listening = False

    @property
    def waiting(self) -> int:
        return self._count

    def _notified(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        if not isinstance(payload, str) or not payload.isascii() or not payload.isdigit():
            return
        for event in self._waiters.get(int(payload), ()):
            event.set()

    def _wake_all(self) -> None:
        # The connection is gone: notifications may have been missed, so every waiter
        # re-reads its job (and answers with what it finds).
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def run(self) -> None:
        """LISTEN until cancelled, reconnecting after a lost connection."""
        while True:
            try:
                conn = await self._connect()
            except DatabaseError as exc:
                log.warning("job_done_listen_failed", error=str(exc))
            else:
                try:
                    await self._listen(conn)
                finally:
                    self.listening = False
                    self._wake_all()
                    conn.terminate()
            await anyio.sleep(RECONNECT_SECONDS)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = anyio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            await listen.listen(conn, listen.JOB_DONE, self._notified)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("job_done_listen_failed", error=str(exc))
            return
        self.listening = True
        log.debug("job_done_listening")
        await lost.wait()
        log.warning("job_done_listen_lost")

    @contextlib.contextmanager
    def watch(self, job_id: int) -> Iterator[anyio.Event | None]:
        """An event set when job ``job_id`` ends (or the LISTEN is lost); None when this
        process may not wait now (at the cap, or not listening): answer at once then.
        The caller reads the job again after this returns an event: an end committed before
        the registration sent its notification to nobody."""
        if not self.listening or self._count >= self.max_waiters:
            yield None
            return
        event = anyio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        self._count += 1
        try:
            yield event
        finally:
            self._count -= 1
            events = self._waiters[job_id]
            events.discard(event)
            if not events:
                del self._waiters[job_id]
