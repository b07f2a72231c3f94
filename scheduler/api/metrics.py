"""/metrics: the sampler's latest snapshot and the service statistics, rendered off the loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from scheduler.accounting.metrics import ServiceStats, Snapshot, SnapshotCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render_metrics(snapshot: Snapshot, stats: ServiceStats, *, job_limit: int) -> bytes:
    """The Prometheus text exposition of one snapshot (pure; runs in a worker thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, stats, job_limit=job_limit))
    return generate_latest(registry)


def metrics_renderer(
    snapshot: Callable[[], Snapshot], stats: ServiceStats, *, job_limit: int
) -> Callable[[], Awaitable[bytes]]:
    """What the app calls per scrape: copy on the event loop (the stats are mutated there),
    render in a worker thread (a scrape never blocks the loop)."""

    async def render() -> bytes:
        current, copied = snapshot(), stats.copy()
        return await anyio.to_thread.run_sync(
            lambda: render_metrics(current, copied, job_limit=job_limit)
        )

    return render
