"""Fair share across tenants (Slurm's idea): the next job comes from the tenant that used the
least cpu recently per unit of weight. Pure: the claim (scheduler.claim_jobs, in
migrations/0008_claim_function.sql) computes the same key in SQL with these constants; this
module states the rule and lets it be tested without a database.
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
) -> list[Queued]:
    """The claim order: share key, then priority (highest first), then age (lowest id)."""
    recent = recent or {}
    running = running or {}
    by_tenant: dict[str, list[Queued]] = {}
    for job in sorted(jobs, key=lambda j: (-j.priority, j.id)):
        by_tenant.setdefault(job.tenant, []).append(job)
    keyed: list[tuple[float, int, int, Queued]] = []
    for tenant, queue in by_tenant.items():
        cumulative = 0.0
        for job in queue:
            cumulative += job.cpu
            key = share_key(
                recent.get(tenant, 0.0), running.get(tenant, 0.0), cumulative, weights[tenant]
            )
            keyed.append((key, -job.priority, job.id, job))
    return [item[3] for item in sorted(keyed, key=lambda k: k[:3])]
