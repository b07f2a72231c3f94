"""What the HTTP app needs from the rest of the service (passed in, never imported)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg


@dataclass(frozen=True)
class ApiDeps:
    """The app's dependencies: a pool, the admin token, where logs live, and health checks."""

    pool: asyncpg.Pool
    admin_token: str | None
    runs_dir: Path
    node: str
    # Returns the reasons the service is not ready (empty: ready).
    readiness: Callable[[], Awaitable[list[str]]]
    # Renders the Prometheus exposition (None: an empty one).
    metrics: Callable[[], Awaitable[bytes]] | None = None
