"""Fair share across tenants (Slurm's idea), hierarchical: the next job comes from the subtree
that used the least cpu recently for its share, a subtree's share being its weight among its
siblings times its parent's share. Pure: the claim (scheduler.claim_jobs, in
migrations/0010_control_plane.sql, first made in 0008) computes the same key in SQL with these
constants; this module states the rule and lets it be tested without a database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Usage loses half its weight every HALF_LIFE_SECONDS: a tenant that was busy an hour ago
# competes almost like a new one. The database keeps each tenant's decayed use with the same
# half-life (scheduler.fair_share_half_life(), migrations/0007_recent_cpu.sql).
HALF_LIFE_SECONDS = 300.0
# A running core counts as this many cpu-seconds of usage: jobs that are running but not yet
# billed (no usage row) still weigh on their tenant, and one claim of many jobs interleaves
# tenants instead of handing every slot to whichever tenant was lowest before it.
ALLOCATION_SECONDS = 60.0


def decayed(cpu_seconds: float, age_seconds: float, half_life: float = HALF_LIFE_SECONDS) -> float:
    """``cpu_seconds`` used ``age_seconds`` ago, as it counts now."""
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    return cpu_seconds * math.exp(-math.log(2) * max(0.0, age_seconds) / half_life)


def share_key(
    recent_cpu_seconds: float,
    running_cores: float,
    cores_with_this_job: float,
    weight: int,
    allocation_seconds: float = ALLOCATION_SECONDS,
) -> float:
    """The key a queued job is ordered by (lowest first).

    ``cores_with_this_job`` sums the requests of this job and of its tenant's queued jobs
    ahead of it.
    """
    if weight < 1:
        raise ValueError(f"weight must be >= 1, got {weight}")
    allocated = allocation_seconds * (running_cores + cores_with_this_job)
    return (recent_cpu_seconds + allocated) / weight


@dataclass(frozen=True)
class Queued:
    """A queued job as the fair-share order sees it."""

    id: int
    tenant: str
    cpu: float
    priority: int = 0


def order(
    jobs: Iterable[Queued],
    *,
    weights: dict[str, int],
    recent: dict[str, float] | None = None,
    running: dict[str, float] | None = None,
    parents: dict[str, str | None] | None = None,
    allocation_seconds: float = ALLOCATION_SECONDS,
) -> list[Queued]:
    """The claim order: share key, then priority (highest first), then age (lowest id).

    Hierarchical (``parents``: each tenant's parent, None or absent for a root): a tenant's
    share is its weight among its busy siblings (a job queued or running in their subtree)
    times its parent's share. A job's key is the highest, over its tenant and each ancestor,
    of (the subtree's use + the cores of the subtree's jobs ahead of it, itself included, at
    ``allocation_seconds`` each) / the subtree's share; "ahead" inside a subtree follows the
    tenants' own keys. With every tenant a root this is :func:`share_key`'s order.
    """
    recent = recent or {}
    running = running or {}
    parents = parents or {}

    def chain(tenant: str) -> list[str]:
        found = [tenant]
        while (parent := parents.get(found[-1])) is not None and len(found) <= 32:
            found.append(parent)
        return found

    by_tenant: dict[str, list[Queued]] = {}
    for job in sorted(jobs, key=lambda j: (-j.priority, j.id)):
        if weights[job.tenant] < 1:
            raise ValueError(f"weight must be >= 1, got {weights[job.tenant]}")
        by_tenant.setdefault(job.tenant, []).append(job)
    active = set(by_tenant) | {t for t, cores in running.items() if cores > 0}
    busy = {a for t in active for a in chain(t)}
    siblings: dict[str | None, int] = {}
    for t in busy:
        siblings[parents.get(t)] = siblings.get(parents.get(t), 0) + weights[t]
    share = {t: math.prod(weights[a] / siblings[parents.get(a)] for a in chain(t)) for t in busy}
    own = {t: recent.get(t, 0.0) + allocation_seconds * running.get(t, 0.0) for t in weights}
    used = {t: 0.0 for t in busy}
    for t, value in own.items():
        for a in chain(t):
            if a in used:
                used[a] += value
    tenant_key: dict[int, float] = {}
    for tenant, queue in by_tenant.items():
        ahead = 0.0
        for job in queue:
            ahead += job.cpu
            tenant_key[job.id] = (used[tenant] + allocation_seconds * ahead) / share[tenant]
    queued = [job for queue in by_tenant.values() for job in queue]
    key = {job.id: 0.0 for job in queued}
    for subtree in busy:
        inside = sorted(
            (j for j in queued if subtree in chain(j.tenant)),
            key=lambda j: (tenant_key[j.id], j.id),
        )
        ahead = 0.0
        for job in inside:
            ahead += job.cpu
            level = (used[subtree] + allocation_seconds * ahead) / share[subtree]
            key[job.id] = max(key[job.id], level)
    return sorted(queued, key=lambda j: (key[j.id], -j.priority, j.id))
