"""GET /v1/jobs/{id}/logs: a job's output streamed from disk in bounded memory.

An output file may be as large as the job's disk allows (gigabytes): it is never read whole.
A response is a window ``[start, end)`` of the file sent in chunks of :data:`CHUNK` bytes,
each read in a worker thread and written before the next is read (the server's write flow
control holds the reader back while the client is slow).

Windows: the whole file; the last ``?tail=BYTES``; or one ``Range: bytes=`` range (RFC 9110
section 14): ``a-b``, ``a-`` or ``-n``, answered 206 with Content-Range, or 416 when it starts
past the end. A Range with several ranges, or one this parser does not understand, is ignored
(200 with everything), as the RFC allows. ``follow=true`` starts at the window's start and
goes on until the job ends.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from scheduler.api.problems import Problem

CHUNK = 256 * 1024
MAX_OFFSET = 2**63 - 1
MEDIA = "text/plain"
_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")


def _tail(request: Request) -> int | None:
    raw = request.query_params.get("tail")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_OFFSET:
        raise Problem(400, f"tail must be a byte count in [0, {MAX_OFFSET}]: got {raw[:40]!r}")
    return int(raw)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` one ``bytes=`` range selects in a file of ``size`` bytes; None
    when there is no usable range (absent, several, malformed: answer everything). Raises a
    416 problem when the range cannot be satisfied."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if size == 0:
        raise _unsatisfiable(size)  # an empty output has no byte to select
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # "5-3" is not a valid range: ignore it
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> Problem:
    return Problem(
        416,
        f"the range starts past the end of the output ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
        size=size,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _chunks(path: Path, start: int, end: int | None) -> AsyncIterator[bytes]:
    """The bytes of ``path`` from ``start`` to ``end`` (None: to its end now), in chunks."""
    try:
        f = await anyio.open_file(path, "rb")
    except FileNotFoundError:
        return
    async with f:
        await f.seek(start)
        offset = start
        while end is None or offset < end:
            want = CHUNK if end is None else min(CHUNK, end - offset)
            data = await f.read(want)
            if not data:
                return
            offset += len(data)
            yield data


async def follow_file(
    path: Path, start: int, finished: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """From ``start`` on, as the file grows, until ``finished()`` and nothing more is left."""
    offset = start
    while True:
        async for data in _chunks(path, offset, None):
            offset += len(data)
            yield data
        if await finished():
            # The job's last words may have landed between the read and the check.
            async for data in _chunks(path, offset, None):
                offset += len(data)
                yield data
            return
        await anyio.sleep(0.25)


async def respond(
    request: Request,
    path: Path,
    *,
    follow: bool,
    running: bool,
    finished: Callable[[], Awaitable[bool]],
) -> Response:
    """The response for ``path`` (which may not exist yet: empty output). ``follow`` is what
    the client asked; it streams on only while the job is ``running`` (not final)."""
    tail = _tail(request)
    range_header = request.headers.get("range")
    if tail is not None and range_header is not None:
        raise Problem(400, "send either tail or a Range header, not both")
    if follow and range_header is not None:
        raise Problem(400, "a Range header cannot be combined with follow=true; use tail")
    size = await anyio.to_thread.run_sync(_size, path)
    start = 0 if tail is None else max(0, size - tail)
    if follow and running:
        return StreamingResponse(follow_file(path, start, finished), media_type=MEDIA)
    headers = {"Accept-Ranges": "bytes"}
    status = 200
    window = parse_range(range_header, size)
    end = size
    if window is not None:
        start, end = window
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(
        _chunks(path, start, end), status_code=status, media_type=MEDIA, headers=headers
    )
