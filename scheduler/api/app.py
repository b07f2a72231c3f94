"""The HTTP app: /metrics, /healthz and /readyz for now (the HTTP API issue extends it).

``build_app`` gets its dependencies passed in; :func:`serve_http` runs it with uvicorn as a
task of the agent's task group, without uvicorn's own signal handling (the agent owns
SIGINT/SIGTERM and cancels the group).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anyio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scheduler.accounting.metrics import ServiceStats, Snapshot, SnapshotCollector
from scheduler.errors import ConfigError


@dataclass(frozen=True)
class AppDeps:
    """What the app reads: the sampler's latest snapshot, the service statistics, readiness."""

    snapshot: Callable[[], Snapshot]
    stats: ServiceStats
    ready: Callable[[], bool]
    metrics_jobs: int = 1000


def render_metrics(snapshot: Snapshot, stats: ServiceStats, *, job_limit: int) -> bytes:
    """The Prometheus text exposition of one snapshot (pure; runs in a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, stats, job_limit=job_limit))
    return generate_latest(registry)


def build_app(deps: AppDeps) -> Starlette:
    """The Starlette app serving the agent's health and metrics endpoints."""

    async def metrics(request: Request) -> Response:
        # Copy on the event loop (the stats are mutated there), render in a thread.
        snapshot, stats = deps.snapshot(), deps.stats.copy()
        body = await anyio.to_thread.run_sync(
            lambda: render_metrics(snapshot, stats, job_limit=deps.metrics_jobs)
        )
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if deps.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the agent decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def split_addr(addr: str) -> tuple[str, int]:
    """HOST and PORT of a validated ``HOST:PORT`` (brackets of an IPv6 host removed)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def bind(addr: str) -> socket.socket:
    """A listening socket on ``addr`` (port 0: any free port), or a clear error."""
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
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on http_addr {addr!r}: {exc.strerror or exc}") from exc
    sock.set_inheritable(False)
    return sock


async def serve_http(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on the bound ``sock`` until cancelled."""
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = _Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True
        sock.close()
