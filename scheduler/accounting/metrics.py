"""What Prometheus sees: a snapshot of counters plus the service's own statistics.

The sampler publishes a :class:`Snapshot` after each sweep; the service counts finished
jobs, database errors and latencies in :class:`ServiceStats`. A scrape copies both (on the
event loop, cheap) and renders them in a worker thread through :class:`SnapshotCollector`, a
``prometheus_client`` custom collector: nothing is read from the kernel or the database at
scrape time, so a scrape never blocks the event loop or the dispatch path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.accounting.ledger import TenantLedger
from scheduler.cgroups.base import Usage
from scheduler.cgroups.counters import Sample
from scheduler.cgroups.parse import Pressure
from scheduler.timeconv import NS_PER_SECOND

# From a warm NOTIFY start (a few ms) to a queue backed up for minutes.
DISPATCH_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
# A sweep of a handful of cgroups takes well under 1 ms; 1,000 take tens of ms.
SAMPLE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# The service's own series: prometheus_client's Counter and Histogram (not registered in the
# global registry: each agent, and each test, has its own), rendered by SnapshotCollector.
FINISHED_DOC = "Attempts recorded by this agent, by tenant and final state (queued: to be retried)."
ERRORS_DOC = "Failed database round trips (retried)."
DISPATCH_DOC = "From the commit of a job's insert to its process starting (first attempts)."
SAMPLE_DOC = "Duration of one sampler sweep (read every running cgroup, write the rows)."


def _series(*metrics: prometheus_client.Counter | prometheus_client.Histogram) -> list[Metric]:
    """The metrics' families as they are now, without the ``_created`` samples (the
    exposition has never had them: a restart shows as the counters' reset)."""
    families = []
    for metric in metrics:
        for family in metric.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            families.append(family)
    return families


class ServiceStats:
    """Counters of the service itself. The plain numbers are set on the event loop only; the
    counters and histograms are prometheus_client's (thread-safe), read by :meth:`copy`."""

    def __init__(self) -> None:
        self._finished = prometheus_client.Counter(
            "scheduler_jobs_finished", FINISHED_DOC, ["tenant", "state"], registry=None
        )
        self._database_errors = prometheus_client.Counter(
            "scheduler_database_errors", ERRORS_DOC, registry=None
        )
        self.dispatch_latency = prometheus_client.Histogram(
            "scheduler_dispatch_latency_seconds",
            DISPATCH_DOC,
            buckets=DISPATCH_BUCKETS,
            registry=None,
        )
        self.sample_duration = prometheus_client.Histogram(
            "scheduler_sample_duration_seconds", SAMPLE_DOC, buckets=SAMPLE_BUCKETS, registry=None
        )
        # The usage spool (agent/spool.py): rows and bytes waiting on disk now, rows ever
        # spooled.
        self.spool_rows = 0
        self.spool_bytes = 0
        self.spooled_rows = 0
        # Conditions keeping the agent from all of its work (agent/health.py), 1 while they
        # hold.
        self.conditions: dict[str, int] = {}
        # Attempts whose processes survive SIGKILL now (agent/unkillable.py).
        self.unkillable_jobs = 0
        # The tenants' billed totals on this node: their cpu and io counters
        # (accounting/ledger.py).
        self.billed = TenantLedger()
        # Set on a copy: the library series as they were when copied.
        self._frozen: list[Metric] | None = None

    @property
    def database_errors(self) -> int:
        for family in self._database_errors.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    return int(sample.value)
        return 0

    @database_errors.setter
    def database_errors(self, value: int) -> None:
        # ``stats.database_errors += 1`` at the call sites: a counter only goes up.
        self._database_errors.inc(max(0, value - self.database_errors))

    def attempt_finished(self, tenant: str, state: str, dispatch_latency: float | None) -> None:
        """Count a recorded attempt (and its dispatch latency, when it has one)."""
        self._finished.labels(tenant, state).inc()
        if dispatch_latency is not None:
            self.dispatch_latency.observe(dispatch_latency)

    def library_series(self) -> list[Metric]:
        """The counters and histograms, as families to expose."""
        if self._frozen is not None:
            return self._frozen
        return _series(
            self._finished, self._database_errors, self.dispatch_latency, self.sample_duration
        )

    def copy(self) -> ServiceStats:
        """What a scrape renders in a worker thread while the loop goes on counting."""
        other = ServiceStats()
        other._frozen = self.library_series()
        other.spool_rows, other.spool_bytes = self.spool_rows, self.spool_bytes
        other.spooled_rows = self.spooled_rows
        other.conditions = dict(self.conditions)
        other.unkillable_jobs = self.unkillable_jobs
        other.billed = self.billed.copy()
        return other


@dataclass(frozen=True)
class JobSeries:
    """One running job's latest sample."""

    job_id: int
    tenant: str
    sample: Sample


@dataclass(frozen=True)
class Snapshot:
    """The latest sweep's view: tenants' own cgroups, running jobs, and Postgres counts."""

    tenants: Mapping[str, Usage] = field(default_factory=dict)
    jobs: tuple[JobSeries, ...] = ()
    job_states: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # PSI stall totals of the tenants' cgroups in microseconds, by (resource, "some"/"full");
    # empty where the kernel has no pressure files (v1 without a cgroup2 mirror).
    pressure: Mapping[str, Mapping[tuple[str, str], int]] = field(default_factory=dict)
    # (tenant, currency) -> (budget, spend of its subtree this period), per budget set.
    budgets: Mapping[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


def monotonic(previous: Usage | None, current: Usage) -> Usage:
    """``current`` with every counter raised to at least ``previous``.

    A tenant's cgroup keeps its exited jobs' cpu; the per-device io statistics of a removed
    child are not guaranteed to stay with the parent on every kernel, and a Prometheus counter
    must never go backwards while the agent runs, so counters are held at their high mark.
    Gauges (memory) pass through.
    """
    if previous is None:
        return current
    return replace(
        current,
        cpu_ns=max(previous.cpu_ns, current.cpu_ns),
        cpu_user_ns=max(previous.cpu_user_ns, current.cpu_user_ns),
        cpu_system_ns=max(previous.cpu_system_ns, current.cpu_system_ns),
        io_read_bytes=max(previous.io_read_bytes, current.io_read_bytes),
        io_write_bytes=max(previous.io_write_bytes, current.io_write_bytes),
    )


def pressure_totals(pressure: Mapping[str, Pressure]) -> dict[tuple[str, str], int]:
    """(resource, kind) -> stall total in microseconds, from parsed PSI files."""
    out: dict[tuple[str, str], int] = {}
    for resource, psi in pressure.items():
        out[(resource, "some")] = psi.some.total_us
        if psi.full is not None:
            out[(resource, "full")] = psi.full.total_us
    return out


def seconds(ns: int) -> float:
    """Prometheus floats from integer nanoseconds (exact values live in the billing rows)."""
    return float(Decimal(ns) / NS_PER_SECOND)


class SnapshotCollector(Collector):
    """Renders one snapshot and one copy of the service statistics; no I/O."""

    def __init__(self, snapshot: Snapshot, stats: ServiceStats, *, job_limit: int) -> None:
        self._snapshot = snapshot
        self._stats = stats
        self._job_limit = job_limit

    def collect(self) -> Iterator[Metric]:
        yield from self._tenant_metrics()
        yield from self._job_metrics()
        yield from self._service_metrics()

    def _tenant_metrics(self) -> Iterator[Metric]:
        snap = self._snapshot
        cpu = CounterMetricFamily(
            "scheduler_tenant_cpu_seconds",
            "CPU time billed to the tenant's jobs on this node (every job, summed from its "
            "usage rows; the sum over mode is exact, the user/system split an estimate).",
            labels=["tenant", "mode"],
        )
        memory = GaugeMetricFamily(
            "scheduler_tenant_memory_bytes",
            "Memory charged to the tenant's cgroup now.",
            labels=["tenant"],
        )
        io = CounterMetricFamily(
            "scheduler_tenant_io_bytes",
            "I/O bytes billed to the tenant's jobs on this node (block I/O, and written "
            "stdout/stderr kept), by direction.",
            labels=["tenant", "direction"],
        )
        billed = self._stats.billed.tenants
        for tenant in sorted(billed):
            totals = billed[tenant]
            cpu.add_metric([tenant, "user"], float(totals.cpu_user))
            cpu.add_metric([tenant, "system"], float(totals.cpu_system))
            io.add_metric([tenant, "read"], float(totals.io_read_bytes))
            io.add_metric([tenant, "write"], float(totals.io_write_bytes))
        for tenant in sorted(snap.tenants):
            memory.add_metric([tenant], float(snap.tenants[tenant].memory_current_bytes))
        jobs = GaugeMetricFamily(
            "scheduler_tenant_jobs", "Jobs of the tenant by state.", labels=["tenant", "state"]
        )
        queue = GaugeMetricFamily(
            "scheduler_queue_depth", "Queued jobs of the tenant.", labels=["tenant"]
        )
        queued: Counter[str] = Counter()
        for (tenant, state), n in sorted(snap.job_states.items()):
            jobs.add_metric([tenant, state], float(n))
            if state == "queued":
                queued[tenant] += n
        for tenant in sorted({t for t, _ in snap.job_states}):
            queue.add_metric([tenant], float(queued[tenant]))
        stall = CounterMetricFamily(
            "scheduler_tenant_pressure_stall_seconds",
            "Time some (or all, kind=full) of the tenant's tasks stalled waiting for a "
            "resource (PSI of the tenant's cgroup).",
            labels=["tenant", "resource", "kind"],
        )
        for tenant in sorted(snap.pressure):
            for (resource, kind), total_us in sorted(snap.pressure[tenant].items()):
                stall.add_metric([tenant, resource, kind], total_us / 1_000_000)
        yield from (cpu, memory, io, jobs, queue, stall)
        yield from self._budget_metrics()

    def _budget_metrics(self) -> Iterator[Metric]:
        # One series per budget the operator set (not per tenant or job): the same values on
        # every agent (read from the database), so dashboards take max by (tenant, currency).
        budget = GaugeMetricFamily(
            "scheduler_tenant_budget",
            "The tenant's budget for its subtree in the current period (month or total).",
            labels=["tenant", "currency"],
        )
        spend = GaugeMetricFamily(
            "scheduler_tenant_spend",
            "Priced usage of the tenant's subtree in its budget's currency and current period "
            "(tenants with a budget only).",
            labels=["tenant", "currency"],
        )
        for (tenant, currency), (amount, spent) in sorted(self._snapshot.budgets.items()):
            budget.add_metric([tenant, currency], amount)
            spend.add_metric([tenant, currency], spent)
        yield from (budget, spend)

    def _job_metrics(self) -> Iterator[Metric]:
        if self._job_limit <= 0:
            return
        cpu = CounterMetricFamily(
            "scheduler_job_cpu_seconds",
            "CPU time of a running job.",
            labels=["tenant", "job_id"],
        )
        memory = GaugeMetricFamily(
            "scheduler_job_memory_bytes",
            "Memory charged to a running job's cgroup now.",
            labels=["tenant", "job_id"],
        )
        io = CounterMetricFamily(
            "scheduler_job_io_bytes",
            "Block I/O bytes of a running job, by direction.",
            labels=["tenant", "job_id", "direction"],
        )
        shown = sorted(self._snapshot.jobs, key=lambda j: j.job_id)[: self._job_limit]
        for job in shown:
            labels = [job.tenant, str(job.job_id)]
            cpu.add_metric(labels, seconds(job.sample.cpu_ns))
            memory.add_metric(labels, float(job.sample.memory_current_bytes))
            io.add_metric([*labels, "read"], float(job.sample.io_read_bytes))
            io.add_metric([*labels, "write"], float(job.sample.io_write_bytes))
        yield from (cpu, memory, io)

    def _service_metrics(self) -> Iterator[Metric]:
        stats = self._stats
        spool_rows = GaugeMetricFamily(
            "scheduler_usage_spool_rows",
            "Usage rows kept in the state directory until the database takes them.",
        )
        spool_rows.add_metric([], float(stats.spool_rows))
        spool_bytes = GaugeMetricFamily(
            "scheduler_usage_spool_bytes", "Bytes the usage spool takes on disk."
        )
        spool_bytes.add_metric([], float(stats.spool_bytes))
        spooled = CounterMetricFamily(
            "scheduler_usage_spooled_rows", "Usage rows written to the spool (not to Postgres)."
        )
        spooled.add_metric([], float(stats.spooled_rows))
        degraded = GaugeMetricFamily(
            "scheduler_agent_degraded",
            "1 while a condition keeps the agent from part of its work (see /readyz).",
            labels=["condition"],
        )
        for condition, value in sorted(stats.conditions.items()):
            degraded.add_metric([condition], float(value))
        unkillable = GaugeMetricFamily(
            "scheduler_unkillable_jobs",
            "Running attempts whose processes survive SIGKILL (the kill is being retried).",
        )
        unkillable.add_metric([], float(stats.unkillable_jobs))
        yield from (spool_rows, spool_bytes, spooled, degraded, unkillable)
        yield from stats.library_series()
