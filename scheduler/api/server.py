"""Serving the API with uvicorn inside the agent's task group, within the limits of
:mod:`scheduler.api.limits` (timeouts, a connection cap, a bound on request heads)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from starlette.types import ASGIApp

from scheduler.api.limits import Connections, HttpLimits, protocol_for
from scheduler.errors import ConfigError


class _Server(uvicorn.Server):
    # The agent owns SIGINT/SIGTERM (it must stop without killing jobs): uvicorn must not
    # install handlers of its own.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def split_addr(addr: str) -> tuple[str, int]:
    """HOST and PORT of a validated ``HOST:PORT`` (brackets of an IPv6 host removed)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def bind(addr: str) -> socket.socket:
    """A listening socket on ``addr`` (port 0: any free port), or a clear start-up error.

    The socket comes from getaddrinfo, so its protocol is IPPROTO_TCP: asyncio turns on
    TCP_NODELAY only for sockets that say they are TCP, and without it a response written in
    two parts waits ~40 ms for a delayed ACK.
    """
    host, port = split_addr(addr)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"http_addr {addr!r}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on http_addr {addr!r}: {exc.strerror or exc}") from exc
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(app: ASGIApp, sock: socket.socket, limits: HttpLimits | None = None) -> None:
    """Serve until cancelled, then shut down gracefully (open requests finish)."""
    limits = limits or HttpLimits()
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=max(1, round(limits.keepalive_seconds)),
        http=protocol_for(Connections(limits)),
    )
    server = _Server(config)
    stopped = anyio.Event()

    async def run() -> None:
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            await anyio.sleep_forever()
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await stopped.wait()
            sock.close()
