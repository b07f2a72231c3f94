"""Reading a request body with a bound on its size and its time, before any database work.

A body is read chunk by chunk with a running count: a client that announces (Content-Length)
or sends more than :data:`~scheduler.api.bodies.MAX_BODY_BYTES` gets a 413 at once, so no
body is ever held whole past the limit. Handlers read and validate the body first and only
then take a database connection: a slow client holds a socket, never a connection that the
agent's own work or another request needs.
"""

from __future__ import annotations

import anyio
from starlette.requests import Request

from scheduler.api.bodies import MAX_BODY_BYTES
from scheduler.api.budget import CLOSE
from scheduler.api.context import deps
from scheduler.api.problems import Problem


def too_large(detail: str) -> Problem:
    return Problem(413, detail, headers=CLOSE, max_bytes=MAX_BODY_BYTES)


def announced_length(request: Request) -> int | None:
    """The Content-Length the client announced (None: chunked or absent); 400 if malformed."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise Problem(400, f"Content-Length must be a decimal byte count: got {raw[:40]!r}")
    return int(text)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, at most ``limit`` bytes (413 past it, 408 if it is too slow).

    The body must arrive within the app's ``body_seconds`` of the handler asking for it (the
    HTTP server's body timeout is the backstop for routes that never read theirs). A client
    that goes away mid-body raises starlette's ClientDisconnect, which the app logs
    as a debug line (there is nobody to answer).
    """
    length = announced_length(request)
    if length is not None and length > limit:
        raise too_large(f"the body is {length} bytes; at most {limit} are accepted")
    seconds = deps(request).body_seconds
    budget = deps(request).body_budget
    chunks: list[bytes] = []
    received = 0
    try:
        with anyio.move_on_after(seconds) as scope:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise too_large(f"the body is larger than {limit} bytes")
                budget.take(len(chunk))
                chunks.append(chunk)
    finally:
        # Given back once read: parsing follows at once, and the bytes go with the request.
        budget.give(sum(map(len, chunks)))
    if scope.cancelled_caught:
        raise Problem(408, f"the body was not received within {seconds:g} s", headers=CLOSE)
    return b"".join(chunks)
