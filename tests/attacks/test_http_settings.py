"""The HTTP API's settings, each seen doing its job on a real agent: http_header_timeout_seconds,
http_body_timeout_seconds, http_keepalive_timeout_seconds, http_max_connections,
api_db_connections (and the lease's own connection), and the descriptor limit raised at
start."""

from __future__ import annotations

import resource
import socket
import time

import anyio
import asyncpg
import httpx
import pytest

from tests.attacks.conftest import ADMIN, ADMIN_TOKEN, Served, wait_state
from tests.attacks.outcomes import record

pytestmark = pytest.mark.anyio


async def _closed_after(stream: anyio.abc.ByteStream, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``stream`` (at most ``limit``), and what it sent."""
    started = time.monotonic()
    got = b""
    with anyio.fail_after(limit):
        try:
            while True:
                got += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            pass
    return time.monotonic() - started, got


async def test_header_body_and_keepalive_timeouts(served: Served) -> None:
    await served.start(
        http_header_timeout_seconds=1,
        http_body_timeout_seconds=1,
        http_keepalive_timeout_seconds=1,
    )
    port = served.port
    # Silent: closed after the head timeout.
    async with await anyio.connect_tcp("127.0.0.1", port) as silent:
        took, _ = await _closed_after(silent, 15)
    assert 0.8 <= took < 10, took
    # A head that never ends, a byte at a time: closed too.
    async with await anyio.connect_tcp("127.0.0.1", port) as dribble:
        started = time.monotonic()
        with anyio.fail_after(15):
            try:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                    await dribble.send(bytes([byte]))
                    await anyio.sleep(0.1)
            except (anyio.BrokenResourceError, OSError):
                pass
        assert time.monotonic() - started < 10
    # A body slower than the body timeout: 408 problem+json, then closed.
    async with await anyio.connect_tcp("127.0.0.1", port) as slow:
        await slow.send(
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{".encode()
        )
        took, answer = await _closed_after(slow, 15)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"application/problem+json" in answer
    # Keep-alive: an idle connection between requests is closed after its timeout.
    async with await anyio.connect_tcp("127.0.0.1", port) as kept:
        await kept.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        took, answer = await _closed_after(kept, 15)
    assert answer.startswith(b"HTTP/1.1 200 ") and 0.8 <= took < 10, (took, answer)
    record("silent / dribbling / slow-body / idle keep-alive sockets", "closed by their timeouts")


async def test_connection_cap_keeps_the_newest_and_the_busy(served: Served) -> None:
    await served.start(http_max_connections=20, http_header_timeout_seconds=60)
    follower = httpx.AsyncClient(base_url=served.url, timeout=60)
    job = (
        await follower.post(
            "/v1/jobs", headers=ADMIN, json={"argv": ["sh", "-c", "sleep 3; echo done"]}
        )
    ).json()
    await wait_state(follower, job["id"], {"running"})
    followed: list[bytes] = []
    following = anyio.Event()

    async def follow() -> None:
        url = f"/v1/jobs/{job['id']}/logs?follow=true"
        async with follower.stream("GET", url, headers=ADMIN) as r:
            following.set()
            async for chunk in r.aiter_bytes():
                followed.append(chunk)

    before = served.fds()
    socks: list[socket.socket] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await following.wait()
            await _flood(served, socks, before)
    finally:
        await follower.aclose()
    # The follow stream had a request being answered: never evicted, it got the whole output.
    assert b"".join(followed) == b"done\n"
    assert "http_waiting_connection_evicted" in served.log.read_text()


async def _flood(served: Served, socks: list[socket.socket], before: int) -> None:
    """60 silent sockets against a cap of 20: the oldest are closed, health checks answer."""
    try:
        for _ in range(60):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", served.port))
            socks.append(s)
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            for _ in range(5):
                assert (await client.get("/healthz")).status_code == 200
        # The oldest waiting sockets are the ones closed (the kernel reports them reset).
        closed: set[int] = set()
        with anyio.fail_after(30):
            while len(closed) < 15:
                for i, s in enumerate(socks[:20]):
                    try:
                        if s.recv(1) == b"":
                            closed.add(i)
                    except ConnectionResetError:
                        closed.add(i)
                    except OSError:
                        pass  # still open (EAGAIN), or not connected yet
                await anyio.sleep(0.05)
        with anyio.fail_after(10):
            while served.fds() > before + 21:
                await anyio.sleep(0.05)
    finally:
        for s in socks:
            s.close()


async def test_api_and_lease_have_connections_of_their_own(
    served: Served, db: asyncpg.Connection
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        await served.start(api_db_connections=2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Raised to the hard limit at start: descriptors in reserve for the agent's own work.
    limits = anyio.Path(f"/proc/{served.pid}/limits")
    line = next(
        x for x in (await limits.read_text()).splitlines() if x.startswith("Max open files")
    )
    assert line.split()[3:5] == [str(hard), str(hard)], line
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:

        async def submit() -> None:
            r = await client.post("/v1/jobs", headers=ADMIN, json={"argv": ["true"]})
            assert r.status_code == 201, r.text

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(submit)
    rows = await db.fetch(
        "SELECT application_name, count(*) AS n FROM pg_stat_activity"
        " WHERE application_name LIKE 'scheduler attack-node%' GROUP BY 1"
    )
    sessions = {r["application_name"]: r["n"] for r in rows}
    assert sessions["scheduler attack-node lease"] == 1
    assert 1 <= sessions["scheduler attack-node api"] <= 2, sessions
