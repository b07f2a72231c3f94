"""Limits on the API's HTTP connections, so clients cannot take what the agent needs.

uvicorn has a keep-alive timeout but no header or body timeout and no connection limit: an
idle socket (never sending a byte) or a slow one (a byte every few seconds) stayed open
forever, and 20,000 of them exhausted the agent's file descriptors. This protocol (uvicorn's
httptools protocol with timers and a shared count) closes a connection that:

- has not sent a complete request head within ``header_seconds`` of its first byte (or of
  being opened), or whose head passes :data:`MAX_HEAD_BYTES` (431);
- has not sent its whole body within ``body_seconds`` of its head (the app answers 408
  first where it reads the body; this is the backstop for routes that never read it);
- is idle between requests longer than ``keepalive_seconds`` (uvicorn's own timer).

At most ``max_connections`` connections are open. One more arriving closes the connection
that has been waiting on its client the longest (idle, or still sending a request's head or
body: nothing of the agent's is in progress on it), so a flood of idle or slow sockets never
keeps a real request (a health check) out. Only when every connection has a request being
answered is the new one refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger(__name__)

# A request line and headers larger than this are refused (431): llhttp sets no bound.
MAX_HEAD_BYTES = 64 * 1024
# Refusals and evictions are logged at most this often (a flood is one line, not thousands).
LOG_EVERY_SECONDS = 10.0
_HEAD_PROBLEM = json.dumps(
    {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes",
    }
).encode()
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\nconnection: close\r\n"
    + f"content-length: {len(_HEAD_PROBLEM)}\r\n\r\n".encode()
    + _HEAD_PROBLEM
)


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP server's limits (settings http_*)."""

    max_connections: int = 1000
    header_seconds: float = 10.0
    body_seconds: float = 30.0
    keepalive_seconds: float = 5.0


@dataclass
class Connections:
    """Every open connection of one server; ``waiting``: those waiting on their client (no
    request being answered), in the order they started waiting."""

    limits: HttpLimits
    open: set[GuardedProtocol] = field(default_factory=set)
    waiting: OrderedDict[GuardedProtocol, None] = field(default_factory=OrderedDict)
    evicted: int = 0
    refused: int = 0
    timed_out: int = 0
    _logged_at: float = 0.0

    def opened(self, conn: GuardedProtocol) -> bool:
        """Count ``conn`` in; False if it must be refused (the limit, none waiting)."""
        self.open.add(conn)
        self.waiting[conn] = None
        if len(self.open) <= self.limits.max_connections:
            return True
        oldest = next((c for c in self.waiting if c is not conn), None)
        if oldest is None:
            self.refused += 1
            self._note("http_connection_refused")
            return False
        self.evicted += 1
        self._note("http_waiting_connection_evicted")
        oldest.close_now()
        return True

    def busy(self, conn: GuardedProtocol) -> None:
        """A request of ``conn`` arrived whole: it is being answered."""
        self.waiting.pop(conn, None)

    def rested(self, conn: GuardedProtocol) -> None:
        """``conn`` was answered: it waits on its client again (the newest to wait)."""
        if conn in self.open:
            self.waiting[conn] = None
            self.waiting.move_to_end(conn)

    def closed(self, conn: GuardedProtocol) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)

    def _note(self, event: str) -> None:
        # One warning per LOG_EVERY_SECONDS under a flood, with the totals so far.
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.warning(
                event,
                open=len(self.open),
                max_connections=self.limits.max_connections,
                evicted=self.evicted,
                refused=self.refused,
            )


# A connection closed while the client still sends (a refused body: 413, 408) lingers: the
# answer goes out, then a FIN (write_eof), and what the client still sends is read and
# dropped for at most this long and this much. Closing at once with unread bytes makes the
# kernel send a reset that can discard the answer before it leaves (seen on a slow VM).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024  # a fast client has many MiB in flight; dropping is cheap


class _LingeringTransport:
    """The connection's transport, whose close() lingers (see LINGER_SECONDS) while the
    client may still be sending the request; everything else is the transport's own."""

    def __init__(self, inner: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._inner = inner
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._inner.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self._protocol.mid_request() or not self._inner.can_write_eof():
            self._inner.close()
            return
        self._protocol.linger()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body timers and the connection count."""

    guard: ClassVar[Connections]  # set on the subclass made by protocol_for()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._oversized = False
        self._head_bytes = self._head_size = 0
        self.lingering = False
        self._receiving = False  # a request began and has not been received whole
        self._lingered_bytes = 0

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        if not self.transport.is_closing():
            type(self).guard.timed_out += 1
            log.debug("http_connection_timed_out", phase=phase, client=self.client)
            self.close_now()

    def close_now(self) -> None:
        """Close at once (abort: the descriptor is freed now, nothing is left to send)."""
        self._disarm()
        if not self.transport.is_closing() or self.lingering:
            self.transport.abort()

    def mid_request(self) -> bool:
        """Whether the client may still be sending a request (its head or body)."""
        return self._receiving

    def linger(self) -> None:
        """Send what is buffered and a FIN, then drop what the client still sends until it
        closes too, LINGER_SECONDS pass or LINGER_BYTES arrive (then abort)."""
        self.lingering = True
        self._disarm()
        self._timer = self.loop.call_later(LINGER_SECONDS, self.close_now)
        self.transport.write_eof()
        self.transport.resume_reading()  # uvicorn may have paused it on a large body

    def eof_received(self) -> None:
        if self.lingering:
            self.close_now()
            return
        super().eof_received()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport = _LingeringTransport(transport, self)  # type: ignore[assignment]
        super().connection_made(transport)
        limits = type(self).guard.limits
        if not type(self).guard.opened(self):
            self.close_now()
            return
        self._arm(limits.header_seconds, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        type(self).guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_BYTES:
                self.close_now()
            return
        # Two counts: the bytes received while a head is incomplete (a head that never ends),
        # and the parsed head's own size (a large head that arrived in one read).
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        oversized = self._oversized or (self._in_head and self._head_bytes > MAX_HEAD_BYTES)
        if oversized and not self.transport.is_closing():
            self._disarm()
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        self._receiving = True
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._head_size = 0
        self._arm(type(self).guard.limits.header_seconds, "head")

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_size > MAX_HEAD_BYTES:
            self._oversized = True  # answered 431 by data_received; the app never sees it
            return
        super().on_headers_complete()
        # A second later than the app's own 408, which answers where the body is read.
        self._arm(type(self).guard.limits.body_seconds + 1.0, "body")

    def on_body(self, body: bytes) -> None:
        if not self._oversized:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._receiving = False
        if self._oversized:
            return
        super().on_message_complete()
        self._disarm()
        type(self).guard.busy(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.pipeline and not self.transport.is_closing():
            type(self).guard.rested(self)


def protocol_for(connections: Connections) -> type[GuardedProtocol]:
    """A protocol class bound to one server's connections (uvicorn instantiates classes)."""
    return type("BoundGuardedProtocol", (GuardedProtocol,), {"guard": connections})
