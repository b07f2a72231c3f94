"""The tenants' counters on /metrics, kept from the bill itself, so that they agree with it.

``scheduler_tenant_cpu_seconds_total`` and ``scheduler_tenant_io_bytes_total`` are the sums of
the usage rows this node committed (or spooled) for each tenant: a baseline read from the
usage table when the agent starts (so a restart neither resets them nor loses a tenant with
nothing running), plus every row kept since, sweep rows and closing rows alike (so a job that
ends between two sweeps is counted). Summed over ``mode``, the cpu counter is the tenant's
billed cpu on this node exactly; the split between ``user`` and ``system`` is an estimate:
each row's cpu is divided in the proportion of its job's own user and system counters
(cpuacct.usage_user/usage_sys on v1, which the kernel derives from ticks; cpu.stat on v2),
the baseline in the proportion of the tenant's cgroup. Counters are per tenant, not
including its child tenants (each has its own series): ``sum by (tenant)`` is the bill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from scheduler.timeconv import NS_PER_SECOND

NS = Decimal(NS_PER_SECOND)


@dataclass
class TenantTotals:
    """One tenant's billed totals on this node (cpu in seconds, exact)."""

    cpu_user: Decimal = Decimal(0)
    cpu_system: Decimal = Decimal(0)
    io_read_bytes: int = 0
    io_write_bytes: int = 0

    @property
    def cpu(self) -> Decimal:
        return self.cpu_user + self.cpu_system


def user_share(user_ns: int, system_ns: int) -> Decimal:
    """The fraction of cpu spent in user mode, from a user and a system counter (1 when
    neither counted anything: the kernel's ticks missed a short job)."""
    total = user_ns + system_ns
    if total <= 0:
        return Decimal(1)
    return Decimal(user_ns) / Decimal(total)


@dataclass
class TenantLedger:
    """Billed totals per tenant, mutated on the event loop only (copied for a scrape)."""

    tenants: dict[str, TenantTotals] = field(default_factory=dict)

    def add(
        self,
        tenant: str,
        cpu_seconds: Decimal,
        io_read_bytes: int,
        io_write_bytes: int,
        share: Decimal = Decimal(1),
    ) -> None:
        """Count one kept usage row; ``share``: the part of its cpu spent in user mode."""
        totals = self.tenants.setdefault(tenant, TenantTotals())
        user = cpu_seconds * min(Decimal(1), max(Decimal(0), share))
        totals.cpu_user += user
        totals.cpu_system += cpu_seconds - user
        totals.io_read_bytes += io_read_bytes
        totals.io_write_bytes += io_write_bytes

    def load(
        self, rows: Iterable[Mapping[str, object]], shares: Mapping[str, Decimal] | None = None
    ) -> None:
        """Start from the usage table's sums per tenant (rows with ``tenant``,
        ``cpu_seconds``, ``io_read_bytes``, ``io_write_bytes``)."""
        for row in rows:
            tenant = str(row["tenant"])
            cpu = row["cpu_seconds"]
            self.add(
                tenant,
                cpu if isinstance(cpu, Decimal) else Decimal(str(cpu or 0)),
                int(str(row["io_read_bytes"] or 0)),
                int(str(row["io_write_bytes"] or 0)),
                (shares or {}).get(tenant, Decimal(1)),
            )

    def copy(self) -> TenantLedger:
        return TenantLedger(
            {
                t: TenantTotals(v.cpu_user, v.cpu_system, v.io_read_bytes, v.io_write_bytes)
                for t, v in self.tenants.items()
            }
        )
