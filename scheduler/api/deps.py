"""What the HTTP app needs from the rest of the service (passed in, never imported)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.api.budget import BodyBudget
from scheduler.api.dbwait import ApiPool
from scheduler.api.waiters import JobDoneHub


@dataclass(frozen=True)
class ApiDeps:
    """The app's dependencies: a pool, the admin token, where logs live, and health checks.

    ``pool`` is the API's own, bounded pool: requests never take a connection that the
    agent's heartbeat, claims or recording need, and wait a bounded time for one."""

    pool: ApiPool
    admin_token: str | None
    runs_dir: Path
    node: str
    # Returns the reasons the service is not ready (empty: ready).
    readiness: Callable[[], Awaitable[list[str]]]
    # Renders the Prometheus exposition (None: an empty one).
    metrics: Callable[[], Awaitable[bytes]] | None = None
    # When set, /metrics requires it as a bearer token (SCHEDULER_METRICS_TOKEN).
    metrics_token: str | None = None
    # A request body must arrive within this many seconds of the handler reading it.
    body_seconds: float = 30.0
    # What all bodies being read at once may hold (reading.py).
    body_budget: BodyBudget = field(default_factory=BodyBudget)
    # Wakes GET /v1/jobs/{id}?wait=N requests when their job ends (None: no waiting).
    job_done: JobDoneHub | None = None
    # The most members one array submission may make (SCHEDULER_MAX_ARRAY_SIZE).
    max_array_size: int = 10_000
