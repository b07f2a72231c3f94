"""Slow request bodies and thousands of idle sockets against a real agent running jobs: the
lease is kept, claims go on, and /healthz still answers at once.

On the old agent, 8 slow bodies held the 8 connections of the pool the heartbeat shares (the
body was read with a connection in hand): the lease was lost and the node fenced itself. Idle
sockets had no timeout and no cap: enough of them exhausted the descriptor table.
"""

from __future__ import annotations

import errno
import resource
import socket
import statistics
import time

import anyio
import asyncpg
import httpx
import pytest

from scheduler.api.auth import create_token
from tests.agent_process import SHORT_LEASE
from tests.attacks.conftest import ADMIN, Served, wait_state
from tests.attacks.outcomes import record

pytestmark = pytest.mark.anyio

SLOW_BODIES = 8
IDLE_SOCKETS = 5000
MAX_CONNECTIONS = 1000
ATTACK_SECONDS = 3 * SHORT_LEASE["lease_seconds"]  # several leases long


async def _slow_body(port: int, token: str, stop: anyio.Event, sent: list[int]) -> None:
    """POST /v1/jobs announcing 100,000 bytes and sending one every 0.5 s; a persistent
    attacker, it reconnects when the agent closes the connection (the flood of idle sockets
    makes it evict the connections waiting on their clients longest, these among them)."""
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(head)
                while not stop.is_set():
                    await stream.send(b" ")
                    sent[0] += 1
                    with anyio.move_on_after(0.5):
                        await stop.wait()
        except (anyio.BrokenResourceError, OSError):
            sent[1] += 1
            await anyio.sleep(0.1)


def _open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (non-blocking connects: the ones the
    kernel's backlog cannot take yet complete later or fail, without blocking the test)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            code = s.connect_ex(("127.0.0.1", port))
            assert code in (0, errno.EINPROGRESS, errno.EAGAIN), errno.errorcode.get(code)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


async def _healthz_ms(port: int) -> float:
    """Milliseconds for a new connection's GET /healthz to be answered in full."""
    started = time.perf_counter()
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while b'"ok"' not in answer:
                answer += await stream.receive()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    return (time.perf_counter() - started) * 1000


async def test_slow_bodies_and_idle_sockets_do_not_starve_the_agent(
    served: Served, db: asyncpg.Connection
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_SOCKETS + 512 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    await served.start(
        **SHORT_LEASE, http_max_connections=MAX_CONNECTIONS, http_body_timeout_seconds=120
    )
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('mallory')")
    _, token = await create_token(db, "mallory")
    epoch = await db.fetchval("SELECT epoch FROM scheduler.nodes WHERE name = 'attack-node'")
    # A new connection per request: the cap closes the connection idle longest, which a kept-
    # alive one of the test's own client would be, and a request racing that close fails.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=served.url, timeout=30, limits=no_keepalive) as client:
        victim = (
            await client.post("/v1/jobs", headers=ADMIN, json={"argv": ["sleep", "120"]})
        ).json()
        await wait_state(client, victim["id"], {"running"})

        stop = anyio.Event()
        sent = [0, 0]  # bytes sent, reconnections
        idle: list[socket.socket] = []
        latencies: list[float] = []
        peak_fds = 0
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(SLOW_BODIES):
                    tg.start_soon(_slow_body, served.port, token, stop, sent)
                with anyio.fail_after(30):
                    while sent[0] < SLOW_BODIES:  # every slow body under way first
                        await anyio.sleep(0.05)
                idle = _open_idle(served.port, IDLE_SOCKETS)
                deadline = time.monotonic() + ATTACK_SECONDS
                queued = (
                    await client.post("/v1/jobs", headers=ADMIN, json={"argv": ["true"]})
                ).json()
                while time.monotonic() < deadline:
                    assert served.alive(), served.log.read_text()[-3000:]
                    latencies.append(await _healthz_ms(served.port))
                    peak_fds = max(peak_fds, served.fds())
                    await anyio.sleep(0.25)
                started = await wait_state(client, queued["id"], {"succeeded"})
                stop.set()
        finally:
            for s in idle:
                s.close()
        after = (await client.get(f"/v1/jobs/{victim['id']}", headers=ADMIN)).json()
        await client.post(f"/v1/jobs/{victim['id']}/cancel", headers=ADMIN)

    log = served.log.read_text()
    assert served.alive(), log[-3000:]
    assert "lease_lost" not in log and "node_fenced" not in log, log[-3000:]
    node = await db.fetchrow(
        "SELECT epoch, state, lease_expires_at > now() AS live FROM scheduler.nodes"
        " WHERE name = 'attack-node'"
    )
    assert node is not None and (node["epoch"], node["state"], node["live"]) == (epoch, "up", True)
    assert after["state"] == "running"  # the other tenant's job was never touched
    assert started["state"] == "succeeded"
    assert sent[0] >= SLOW_BODIES * 10  # the slow bodies really trickled all along
    median = statistics.median(latencies)
    assert median < 100, f"/healthz took {sorted(latencies)} ms"
    # The cap held: the agent's descriptors stayed near it, far from the 5,000 sockets.
    assert peak_fds < MAX_CONNECTIONS + 300, peak_fds
    record(
        f"{SLOW_BODIES} slow bodies + {IDLE_SOCKETS} idle sockets, jobs running",
        f"lease kept (epoch {epoch}), queued job ran, /healthz median {median:.0f} ms"
        f" (max {max(latencies):.0f}), agent fds <= {peak_fds}; slow bodies reconnected"
        f" {sent[1]} times",
    )
