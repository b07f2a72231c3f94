"""Where the tenants' billed counters start when the agent does (accounting/ledger.py)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import structlog

from scheduler.accounting.ledger import TenantLedger, user_share
from scheduler.accounting.reconcile import tenant_chains
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath
from scheduler.errors import CgroupError
from scheduler.repos import usage as usage_repo

log = structlog.get_logger(__name__)


async def load_billed(
    pool: asyncpg.Pool, driver: CgroupDriver, node: str, ledger: TenantLedger
) -> None:
    """Start ``ledger`` from what ``node`` billed each tenant so far; the baseline's cpu is
    split between user and system as the tenant's cgroup split it (all user without one)."""
    rows = await usage_repo.node_billed_totals(pool, node)
    if not rows:
        return
    tenants = await usage_repo.tenant_parents(pool)
    chains = tenant_chains(tenants)
    wanted = {str(r["tenant"]) for r in rows}

    def shares() -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for tenant in wanted:
            chain = chains.get(tenant)
            if chain is None:
                continue
            try:
                usage = driver.read_usage(CgroupPath(chain))
            except (CgroupError, OSError, ValueError):
                continue  # no cgroup of this tenant on this node (since boot)
            out[tenant] = user_share(usage.cpu_user_ns, usage.cpu_system_ns)
        return out

    ledger.load([dict(r.items()) for r in rows], await async_driver(driver).run(shares))
    log.info("billed_totals_loaded", tenants=len(rows))
