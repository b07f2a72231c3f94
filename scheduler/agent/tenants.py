"""Tenant cgroups: each tenant's chain of ancestors becomes nested cgroups under the root."""

from __future__ import annotations

from decimal import Decimal

import anyio
import asyncpg
import structlog

from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.repos import tenant_tree
from scheduler.runtime.sandbox import TenantIdentity

log = structlog.get_logger(__name__)

PID_MAX_FILE = "/proc/sys/kernel/pid_max"


def node_pids_cap(setting: int = 0, pid_max_file: str = PID_MAX_FILE) -> int:
    """The most pids one tenant's subtree may hold on this node: ``setting``, or (0) a
    quarter of the kernel's pid_max, so that no one tenant can use up the host's pids."""
    if setting > 0:
        return setting
    try:
        with open(pid_max_file) as f:
            pid_max = int(f.read())
    except (OSError, ValueError):
        pid_max = 32768  # the kernel's default
    return max(1, pid_max // 4)


def tenant_limits(
    row: asyncpg.Record, io_devices: tuple[str, ...] = (), pids_cap: int | None = None
) -> Limits:
    """The kernel limits a tenant row asks for (io limits on ``io_devices``); its pids are
    held to ``pids_cap`` also when the tenant sets no limit."""
    cpu: Decimal | None = row["cpu_limit"]
    pids: int | None = row["pids_limit"]
    if pids_cap is not None:
        pids = pids_cap if pids is None else min(pids, pids_cap)
    return Limits(
        cpu_cores=float(cpu) if cpu is not None else None,
        memory_bytes=row["memory_limit_bytes"],
        pids_max=pids,
        weight=row["weight"],
        io_read_bps=row.get("io_read_bps"),
        io_write_bps=row.get("io_write_bps"),
        io_devices=io_devices,
    )


class TenantCgroups:
    """Creates each tenant's cgroup (and its ancestors') once and remembers its path."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        driver: CgroupDriver,
        io_devices: tuple[str, ...] = (),
        *,
        pids_cap: int | None = None,
    ) -> None:
        # The block devices io limits (tenants' and jobs') are written for.
        self.io_devices = io_devices
        # The node-wide most pids of one tenant's subtree (see node_pids_cap).
        self.pids_cap = pids_cap if pids_cap is not None else node_pids_cap()
        # Each tenant's uid/gid, read with its chain (they never change once allocated).
        self._identities: dict[str, TenantIdentity] = {}
        self._pool = pool
        self._driver = driver
        self._paths: dict[str, tuple[str, ...]] = {}
        # The smallest output_limit_bytes along each tenant's chain (None: none set).
        self._output_limits: dict[str, int | None] = {}
        self._lock = anyio.Lock()

    async def chain(self, tenant: str) -> tuple[str, ...]:
        """The tenant's cgroup path segments (root tenant first), created on first use."""
        known = self._paths.get(tenant)
        if known is not None:
            return known
        async with self._lock:
            known = self._paths.get(tenant)
            if known is not None:
                return known
            rows = await tenant_tree.tenant_chain(self._pool, tenant)
            if not rows:
                raise LookupError(f"unknown tenant {tenant!r}")
            names = tuple(str(r["name"]) for r in rows)
            limits = [int(v) for r in rows if (v := r.get("output_limit_bytes")) is not None]
            self._output_limits[tenant] = min(limits) if limits else None
            for depth, row in enumerate(rows, start=1):
                await async_driver(self._driver).ensure(
                    CgroupPath(names[:depth]), tenant_limits(row, self.io_devices, self.pids_cap)
                )
            own = rows[-1]
            if own.get("uid") is not None:
                self._identities[tenant] = TenantIdentity(
                    uid=own["uid"], gid=own["gid"], range_first=own["uid_first"]
                )
            self._paths[tenant] = names
            log.info("tenant_cgroup_ready", tenant=tenant, path="/".join(names))
            return names

    def output_limit(self, tenant: str) -> int | None:
        """The smallest output_limit_bytes of the tenant and its ancestors (after ``chain``)."""
        return self._output_limits.get(tenant)

    def identity(self, tenant: str) -> TenantIdentity | None:
        """The tenant's own uid/gid (known once chain() ran for it), or None."""
        return self._identities.get(tenant)

    @property
    def paths(self) -> dict[str, tuple[str, ...]]:
        """Every tenant whose cgroup exists on this node, with its path (live, not a copy)."""
        return self._paths

    def forget(self, tenant: str) -> None:
        """Drop a cached path (after the tenant's limits or parent changed)."""
        self._paths.pop(tenant, None)

    def moved(self, tenant: str, path: tuple[str, ...]) -> None:
        """Forget a cached path that no longer matches the tenant's place in the tree (its
        parent changed): the next job of the tenant is started under the new path."""
        known = self._paths.get(tenant)
        if known is not None and known != path:
            self._paths.pop(tenant, None)
