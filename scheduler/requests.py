"""What clients ask the scheduler for (CLI and HTTP): a job, an array of jobs, a tenant's
settings; with the checks that need no database (the database checks the rest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from scheduler import jobdefaults
from scheduler.errors import SubmitRefused
from scheduler.names import NAME

# The largest Postgres integer: array indexes are int4 columns.
INT4_MAX = 2**31 - 1

# Tenant names become cgroup directory names: the same rule as the database's check.
TENANT_NAME = NAME

# The tenant columns a client may set (their names go into SQL text: only these are accepted).
TENANT_FIELDS = (
    "parent",
    "cpu_limit",
    "memory_limit_bytes",
    "pids_limit",
    "max_running_jobs",
    "weight",
    "io_read_bps",
    "io_write_bps",
    "output_limit_bytes",
)


@dataclass(frozen=True)
class JobRequest:
    """What a client asks for; every field but argv has the database's default."""

    argv: list[str]
    tenant: str = jobdefaults.TENANT
    name: str = jobdefaults.NAME
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = jobdefaults.CWD
    cpu: Decimal = jobdefaults.CPU
    memory_bytes: int = jobdefaults.MEMORY_BYTES
    pids_max: int = jobdefaults.PIDS_MAX
    timeout_seconds: Decimal | None = None
    priority: int = jobdefaults.PRIORITY
    max_attempts: int = jobdefaults.MAX_ATTEMPTS
    labels: dict[str, Any] = field(default_factory=dict)
    run_at: datetime | None = None
    image: str | None = None
    network: bool = jobdefaults.NETWORK
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    # Most bytes of stdout+stderr kept (None: the tenant's, else the node's; never above them).
    output_limit_bytes: int | None = None
    # Jobs of the same tenant that must succeed first (migration 0014); fixed once submitted.
    depends_on: list[int] = field(default_factory=list)
    # Labels a node must have to run the job (migration 0016; scheduler/labels.py).
    constraints: dict[str, str] = field(default_factory=dict)

    # Seconds between SIGTERM and the kill at a cancel or the time limit (None: the
    # column's default, jobdefaults.KILL_GRACE_SECONDS).
    kill_grace_seconds: Decimal | None = None


@dataclass(frozen=True)
class ArraySpec:
    """An array: one job per index in [start, end], at most max_running of them at once."""

    start: int
    end: int
    max_running: int | None = None

    def check(self, max_size: int) -> None:
        """Refuse an empty, reversed or oversized range (max_size: the operator's bound)."""
        if not 0 <= self.start <= self.end <= INT4_MAX:
            raise SubmitRefused(
                f"array {self.start}-{self.end}: expected 0 <= start <= end <= {INT4_MAX}",
                "array",
            )
        if self.size > max_size:
            raise SubmitRefused(
                f"array {self.start}-{self.end} has {self.size} members: at most {max_size}"
                " (the operator's max_array_size)",
                "array",
            )
        if self.max_running is not None and self.max_running < 1:
            raise SubmitRefused(
                f"array max_running must be at least 1: got {self.max_running}", "array"
            )

    @property
    def size(self) -> int:
        return self.end - self.start + 1
