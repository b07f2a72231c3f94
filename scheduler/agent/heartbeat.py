"""The heartbeat: renews this node's lease, and marks nodes whose lease expired down.

The lease is the fence. Other agents act on a node only once its lease expired by more than
the grace; an agent that could not renew its own lease before it expired (by its own clock,
counted from when the last successful renewal was sent) has already killed its jobs by then.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import asyncpg
import structlog

from scheduler.agent.blockers import end_tenant_blockers
from scheduler.agent.lease import NodeLease
from scheduler.db.outage import DB_ERRORS
from scheduler.errors import LeaseLost
from scheduler.repos import lease as lease_repo

log = structlog.get_logger(__name__)


class Heartbeat:
    """Keeps ``lease`` alive every ``interval`` seconds; ``fence`` runs when it is lost."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        lease: NodeLease,
        *,
        lease_seconds: float,
        interval: float,
        grace: float,
        fence: Callable[[str], Awaitable[None]],
        registered_at: float | None = None,
    ) -> None:
        self._pool = pool
        self._lease = lease
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._grace = grace
        self._fence = fence
        start = time.monotonic() if registered_at is None else registered_at
        # Past this instant (monotonic) the lease may have expired: nothing may run any more.
        self.deadline = start + lease_seconds

    async def run(self) -> None:
        """Renew until cancelled; raise :class:`LeaseLost` once the lease is lost."""
        while True:
            await anyio.sleep(max(0.0, min(self._interval, self.deadline - time.monotonic())))
            sent = time.monotonic()
            try:
                with anyio.fail_after(max(0.05, self.deadline - sent)):
                    renewed = await lease_repo.renew_lease(
                        self._pool, self._lease.name, self._lease.epoch, self._lease_seconds
                    )
            except DB_ERRORS as exc:
                if time.monotonic() < self.deadline:
                    log.warning("lease_renewal_failed", error=repr(exc))
                    continue
                await self._lost(
                    f"could not renew the lease of node {self._lease.name!r} before it expired"
                    f" ({exc!r})"
                )
            if renewed is None:
                await self._lost(
                    f"node {self._lease.name!r} epoch {self._lease.epoch} was marked down or"
                    f" taken by another agent"
                )
            self.deadline = sent + self._lease_seconds
            await self.expire_others()
            await end_tenant_blockers(self._pool, self._lease.name)

    async def expire_others(self) -> list[asyncpg.Record]:
        """Mark down nodes whose lease expired by more than the grace; end their attempts."""
        try:
            rows = await lease_repo.expire_nodes(self._pool, self._grace)
        except DB_ERRORS as exc:
            log.warning("node_expiry_failed", error=repr(exc))
            return []
        for node in sorted({r["node"] for r in rows}):
            ended = [r for r in rows if r["node"] == node and r["job_id"] is not None]
            log.warning(
                "node_down",
                down_node=node,
                epoch=ended[0]["epoch"] if ended else None,
                requeued=[r["job_id"] for r in ended if r["state"] == "queued"],
                lost=[r["job_id"] for r in ended if r["state"] == "lost"],
            )
        if any(r["job_id"] is not None for r in rows):
            # Requeued jobs are claimable now; lost ones freed their tenants' limits.
            try:
                await lease_repo.notify_requeued(self._pool)
            except DB_ERRORS:
                log.warning("node_expiry_notify_failed")
        return rows

    async def _lost(self, reason: str) -> None:
        log.error("lease_lost", reason=reason)
        await self._fence(reason)
        raise LeaseLost(f"{reason}: this agent stopped claiming, killed its jobs and exits")
