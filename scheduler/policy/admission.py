"""Admission: what one node may run at once. The arithmetic itself is in SQL (the claim,
scheduler.claim_jobs in migrations/0008_claim_function.sql, and db/queries.sql: unfit_jobs);
this module decides the node's capacity."""

from __future__ import annotations

import os
from dataclasses import dataclass

from scheduler.errors import ConfigError


@dataclass(frozen=True)
class Capacity:
    """The cores and memory the requests of this node's running and frozen jobs may add up to."""

    cpu: float
    memory_bytes: int

    def __post_init__(self) -> None:
        if not self.cpu > 0:
            raise ConfigError(f"node cpu capacity must be > 0 cores, got {self.cpu}")
        if self.memory_bytes < 1:
            raise ConfigError(f"node memory capacity must be > 0 bytes, got {self.memory_bytes}")


def detect_capacity(cpu: float = 0.0, memory_bytes: int = 0) -> Capacity:
    """The configured capacity, each 0 replaced by what the host has: the cpus this process
    may run on (its affinity mask, as a container limits it) and the physical memory."""
    cores = cpu or float(len(os.sched_getaffinity(0)))
    memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Capacity(cores, memory)
