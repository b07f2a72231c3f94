"""Reconciliation: prove that the billing rows add up, or list every way they do not.

Per finished job (of a window): its rows are numbered 1..n; each attempt has exactly one
closing row, last among its rows; an attempt's periods are contiguous; and the last
attempt's rows sum to the job's totals (cpu, io) with their highest peak equal to the job's.
Per tenant on this node: the cpu its cgroup counted since boot is at least what was billed on
this node since boot, and exceeds it by no more than the usage of the jobs still running plus
the counters' rounding: cgroup v2 counts cpu in whole microseconds per cgroup, so each job
cgroup (its own count truncated) and the tenant's (the exact sum truncated once) differ by
less than one microsecond per job cgroup. That allowance is computed and named in the
report, never a fixed slack. A missing cgroup root, or no cgroup for a tenant billed on this
node since boot, is a discrepancy: a check that cannot see the kernel's side proves nothing.
Per tenant with nothing running on this node: the agent's /metrics cpu counter (summed over
mode) is within 1% of everything this node billed it (accounting/ledger.py).
The checks are pure functions; :func:`reconcile` gathers the facts.
"""

from __future__ import annotations

import itertools
import os
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath
from scheduler.jobs import cpu_seconds
from scheduler.repos import usage as usage_repo
from scheduler.timeconv import NS_PER_SECOND

# The totals a started job carries once finished.
TOTALS = ("cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes")


@dataclass(frozen=True)
class Discrepancy:
    """One way the books do not add up, said so a person can look into it."""

    subject: str  # "job 42" or "tenant acme"
    problem: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}"


def check_job(job: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Discrepancy]:
    """Every discrepancy between one finished job and its billing rows."""
    subject = f"job {job['id']}"
    found: list[Discrepancy] = []
    attempts = int(job["attempts"])
    # A finished job lacking these was not written so by the agent (a forced UPDATE).
    state = job.get("state", "a final state")
    if "finished_at" in job and job["finished_at"] is None:
        found.append(Discrepancy(subject, f"finished as {state} without finished_at"))
    if attempts > 0:
        missing = [c for c in TOTALS if job.get(c) is None]
        if missing:
            found.append(
                Discrepancy(
                    subject, f"finished as {state} without totals ({', '.join(missing)} unset)"
                )
            )
    if attempts == 0:
        if rows:
            found.append(Discrepancy(subject, f"never started but has {len(rows)} usage rows"))
        return found
    seqs = [int(r["seq"]) for r in rows]
    if seqs != list(range(1, len(rows) + 1)):
        found.append(Discrepancy(subject, f"rows are numbered {seqs}, expected 1..{len(rows)}"))
    for attempt, group in itertools.groupby(rows, key=lambda r: int(r["attempt"])):
        mine = list(group)
        finals = [r for r in mine if r["final"]]
        if len(finals) != 1:
            found.append(
                Discrepancy(
                    subject, f"attempt {attempt} has {len(finals)} closing rows, expected 1"
                )
            )
        elif not mine[-1]["final"]:
            found.append(Discrepancy(subject, f"attempt {attempt} has rows after its closing row"))
        for before, after in itertools.pairwise(mine):
            if after["period_start"] != before["period_end"]:
                found.append(
                    Discrepancy(
                        subject,
                        f"attempt {attempt}: row {after['seq']} starts at "
                        f"{after['period_start'].isoformat()}, row {before['seq']} ended at "
                        f"{before['period_end'].isoformat()} (periods must be contiguous)",
                    )
                )
    last = [r for r in rows if int(r["attempt"]) == attempts]
    if not last:
        found.append(Discrepancy(subject, f"its last attempt ({attempts}) has no usage rows"))
        return found
    for column in ("cpu_seconds", "io_read_bytes", "io_write_bytes"):
        billed = sum((r[column] for r in last), start=Decimal(0))
        total = job[column]
        if total is None or billed != total:
            found.append(
                Discrepancy(subject, f"{column}: rows sum to {billed}, the job's total is {total}")
            )
    peak = max(int(r["memory_peak_bytes"]) for r in last)
    if peak != job["memory_peak_bytes"]:
        found.append(
            Discrepancy(
                subject,
                f"memory_peak_bytes: rows peak at {peak}, the job's peak is "
                f"{job['memory_peak_bytes']}",
            )
        )
    return found


def check_tenant(
    tenant: str,
    kernel: Decimal,
    billed: Decimal,
    running: Decimal,
    rounding: Decimal = Decimal(0),
) -> list[Discrepancy]:
    """The tenant's cgroup cpu against what was billed (all in seconds); ``rounding`` is what
    the per-cgroup truncation of the counters can add to the kernel's side."""
    subject = f"tenant {tenant}"
    if kernel < billed:
        return [
            Discrepancy(
                subject,
                f"billed {billed} cpu seconds on this node, more than its cgroup counted "
                f"({kernel})",
            )
        ]
    if kernel - billed > running + rounding:
        return [
            Discrepancy(
                subject,
                f"its cgroup counted {kernel} cpu seconds, {kernel - billed} more than billed "
                f"({billed}); running jobs account for at most {running}, the counters' "
                f"rounding for at most {rounding}",
            )
        ]
    return []


# How far a tenant's /metrics cpu counter may be from its bill (float rendering, nothing else).
COUNTER_TOLERANCE = Decimal("0.01")


def tenant_counters(exposition: str) -> dict[str, Decimal]:
    """scheduler_tenant_cpu_seconds_total summed over mode, per tenant, from /metrics text."""
    out: dict[str, Decimal] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "scheduler_tenant_cpu_seconds":
            continue
        for sample in family.samples:
            if sample.name == "scheduler_tenant_cpu_seconds_total":
                tenant = sample.labels.get("tenant", "")
                out[tenant] = out.get(tenant, Decimal(0)) + Decimal(repr(sample.value))
    return out


def check_counters(
    counters: Mapping[str, Decimal], billed: Mapping[str, Decimal], busy: set[str]
) -> list[Discrepancy]:
    """The tenants' /metrics cpu counters against what this node billed them (seconds);
    tenants with a job running here (``busy``) are not quiet and are left out."""
    found: list[Discrepancy] = []
    for tenant in sorted(set(counters) | set(billed)):
        if tenant in busy:
            continue
        counter, bill = counters.get(tenant), billed.get(tenant, Decimal(0))
        if counter is None:
            if bill > 0:
                found.append(
                    Discrepancy(
                        f"tenant {tenant}",
                        f"billed {bill} cpu seconds on this node, but /metrics has no "
                        "scheduler_tenant_cpu_seconds_total for it",
                    )
                )
            continue
        if abs(counter - bill) > max(bill * COUNTER_TOLERANCE, Decimal("0.000001")):
            found.append(
                Discrepancy(
                    f"tenant {tenant}",
                    f"/metrics counts {counter} cpu seconds, its bill on this node is {bill} "
                    f"(more than {COUNTER_TOLERANCE:%} apart)",
                )
            )
    return found


def fetch_metrics(url: str, timeout: float = 10.0) -> str:
    """The /metrics text at ``url`` (blocking), with SCHEDULER_METRICS_TOKEN as a bearer
    token when it is set; OSError (or ValueError for a bad URL) when it cannot be read."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url)  # noqa: S310 (scheme checked above)
    token = os.environ.get("SCHEDULER_METRICS_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(64 * 1024 * 1024)
    return body.decode()


async def check_metrics(conn: asyncpg.Connection, node: str, exposition: str) -> list[Discrepancy]:
    """The agent's tenant counters (``exposition``: its /metrics text) against the bill."""
    running = await usage_repo.node_running(conn, node)
    billed = {
        str(r["tenant"]): Decimal(r["cpu_seconds"])
        for r in await usage_repo.node_billed_totals(conn, node)
    }
    busy = {str(r["tenant"]) for r in running}
    return check_counters(tenant_counters(exposition), billed, busy)


def boot_time(stat_path: str = "/proc/stat") -> datetime:
    """When this host booted (cgroups, and their counters, are no older)."""
    with open(stat_path) as f:
        for line in f:
            if line.startswith("btime "):
                return datetime.fromtimestamp(int(line.split()[1]), tz=UTC)
    raise RuntimeError(f"no btime line in {stat_path}")


def tenant_chains(tenants: list[tuple[str, str | None]]) -> dict[str, tuple[str, ...]]:
    """Each tenant's cgroup path segments, root tenant first (as TenantCgroups builds them)."""
    parents = dict(tenants)
    chains: dict[str, tuple[str, ...]] = {}
    for name in parents:
        path: list[str] = []
        current: str | None = name
        while current is not None and current not in path and len(path) < 32:
            path.append(current)
            current = parents.get(current)
        chains[name] = tuple(reversed(path))
    return chains


def subtree(tenants: list[tuple[str, str | None]], root: str) -> set[str]:
    """``root`` and every tenant nested below it."""
    children: dict[str | None, list[str]] = {}
    for name, parent in tenants:
        children.setdefault(parent, []).append(name)
    out, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(children.get(name, []))
    return out


async def reconcile(
    conn: asyncpg.Connection,
    *,
    start: datetime,
    end: datetime,
    node: str | None = None,
    driver: CgroupDriver | None = None,
    cgroup_root: str = "",
) -> tuple[int, list[Discrepancy]]:
    """(jobs checked, discrepancies) for jobs finished in [start, end), plus, with ``driver``,
    the tenants' cgroups on ``node``."""
    jobs = await usage_repo.finished_jobs(conn, start, end)
    found: list[Discrepancy] = []
    rows = await usage_repo.usage_of_jobs(conn, [j["id"] for j in jobs])
    by_job: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_job.setdefault(row["job_id"], []).append(dict(row.items()))
    for job in jobs:
        found.extend(check_job(dict(job.items()), by_job.get(job["id"], [])))
    if driver is not None and node is not None:
        found.extend(await _check_tenants(conn, node, driver, cgroup_root or repr(driver)))
    return len(jobs), found


async def _check_tenants(
    conn: asyncpg.Connection,
    node: str,
    driver: CgroupDriver,
    root: str,
) -> list[Discrepancy]:
    # Order matters: running jobs, then billed rows, then the kernel (which only grows).
    calls = async_driver(driver)
    if not await calls.exists(CgroupPath(())):
        return [
            Discrepancy(
                f"cgroup root {root!r} ({driver.name})",
                "not found on this host: the tenants' cpu cannot be checked (give the agent's "
                "--cgroup-root or SCHEDULER_CGROUP_ROOT, or --no-cgroups on a host without "
                "jobs)",
            )
        ]
    running = await usage_repo.node_running(conn, node)
    billed_rows = await usage_repo.node_billed_since(conn, node, boot_time())
    billed = {r["tenant"]: r["cpu_seconds"] for r in billed_rows}
    attempts = {r["tenant"]: int(r["attempts"]) for r in billed_rows}
    running_count: dict[str, int] = {}
    for job in running:
        running_count[job["tenant"]] = running_count.get(job["tenant"], 0) + 1
    unit = Decimal(driver.cpu_resolution_ns) / NS_PER_SECOND
    tenants = await usage_repo.tenant_parents(conn)
    chains = tenant_chains(tenants)
    chain = chains.get
    running_cpu: dict[str, Decimal] = {}
    for job in running:
        path = chain(job["tenant"])
        if path is None:
            continue
        try:
            usage = await calls.read_usage(CgroupPath.for_job(path, job["id"]))
            used = cpu_seconds(usage.cpu_ns)
        except Exception:  # ended meanwhile: its final row is billed, nothing runs
            used = Decimal(0)
        running_cpu[job["tenant"]] = running_cpu.get(job["tenant"], Decimal(0)) + used
    found: list[Discrepancy] = []
    for tenant, _ in tenants:
        path = chain(tenant)
        members = subtree(tenants, tenant)
        billed_here = sum((billed.get(t, Decimal(0)) for t in members), start=Decimal(0))
        if path is None or not await calls.exists(CgroupPath(path)):
            if billed_here > 0:
                found.append(
                    Discrepancy(
                        f"tenant {tenant}",
                        f"billed {billed_here} cpu seconds on this node since boot, but its "
                        f"cgroup {'/'.join(path or (tenant,))} under {root!r} is gone",
                    )
                )
            continue  # no cgroup and nothing billed: nothing ran here since boot
        kernel = cpu_seconds((await calls.read_usage(CgroupPath(path))).cpu_ns)
        # Each job cgroup's count is truncated (and so is the running jobs' read): the
        # tenant's single truncation of the exact sum exceeds them by < 1 unit per cgroup.
        cgroups = sum(attempts.get(t, 0) + running_count.get(t, 0) for t in members)
        found.extend(
            check_tenant(
                tenant,
                kernel,
                billed_here,
                sum((running_cpu.get(t, Decimal(0)) for t in members), start=Decimal(0)),
                unit * cgroups,
            )
        )
    return found
