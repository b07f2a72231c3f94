"""The job, as a value, and the pure rules of its lifecycle (no I/O here)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NewType

from scheduler import jobdefaults, states
from scheduler.cgroups.base import Usage
from scheduler.runtime.spec import ExitRecord
from scheduler.timeconv import NS_PER_SECOND

JobId = NewType("JobId", int)
# Defined in scheduler/states.py; importable from here, where most callers look.
JobState = states.JobState
DesiredState = states.DesiredState
FINAL_STATES = states.FINAL_STATES


@dataclass(frozen=True)
class Job:
    """One row of scheduler.jobs, as the agent needs it to run an attempt."""

    id: JobId
    tenant: str
    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    cpu: Decimal
    memory_bytes: int
    pids_max: int
    timeout_seconds: Decimal | None
    priority: int
    max_attempts: int
    attempts: int
    desired_state: str
    submitted_at: datetime
    # Runtime (migration 0002): host network asked for, image name, the tenant's run_as.
    network: bool = False
    image: str | None = None
    run_as: str | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    # Most bytes of stdout+stderr kept (migration 0012); None: the tenant's or node's.
    output_limit_bytes: int | None = None
    # The job's last billing row number when this attempt was claimed (its earlier attempts
    # are closed by then); None when the claim did not say (recovery, an unheard claim).
    usage_seq: int | None = None
    # The array this job is a member of, and its index there (migration 0016).
    array_id: int | None = None
    array_index: int | None = None
    # Seconds between SIGTERM and the kill at a cancel or the time limit (migration 0015).
    kill_grace_seconds: Decimal = jobdefaults.KILL_GRACE_SECONDS

    @classmethod
    def from_row(cls, row: Any) -> Job:
        """Build from an asyncpg record (env arrives as a JSON object of strings)."""
        return cls(
            id=JobId(row["id"]),
            tenant=row["tenant"],
            name=row["name"],
            argv=tuple(row["argv"]),
            env=dict(row["env"]),
            cwd=row["cwd"],
            cpu=row["cpu"],
            memory_bytes=row["memory_bytes"],
            pids_max=row["pids_max"],
            timeout_seconds=row["timeout_seconds"],
            priority=row["priority"],
            max_attempts=row["max_attempts"],
            attempts=row["attempts"],
            desired_state=row["desired_state"],
            submitted_at=row["submitted_at"],
            # Queries that do not start a job (recovery) leave the runtime columns out.
            network=bool(row.get("network", False)),
            image=row.get("image"),
            run_as=row.get("run_as"),
            io_read_bps=row.get("io_read_bps"),
            io_write_bps=row.get("io_write_bps"),
            output_limit_bytes=row.get("output_limit_bytes"),
            usage_seq=row.get("usage_seq"),
            array_id=row.get("array_id"),
            array_index=row.get("array_index"),
            kill_grace_seconds=_grace(row.get("kill_grace_seconds")),
        )


def _grace(value: Decimal | None) -> Decimal:
    """A row's kill_grace_seconds; the column's default where a query left it out."""
    return jobdefaults.KILL_GRACE_SECONDS if value is None else value


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, decided from the monitor's record and the kernel's counters."""

    state: JobState
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    error: str | None
    retry: bool


def decide_outcome(
    record: ExitRecord | None,
    usage: Usage,
    *,
    timed_out: bool,
    cancelled: bool,
    attempts: int,
    max_attempts: int,
) -> Outcome:
    """Map an exit to a final (or retry) state.

    The kernel's own OOM counter decides ``oom_killed``: a job killed by SIGKILL for another
    reason is not reported as OOM, and an OOM kill of a child that the job survived still is.
    """
    oom = usage.oom_kills > 0
    error: str | None
    if record is None:
        state: JobState = "failed"
        code, sig, error = None, None, "the job's monitor ended without an exit record"
    elif record.kind == "start_error":
        state, code, sig = "failed", None, None
        error = record.error or "start error"
    elif record.kind == "signaled":
        state, code, sig = "failed", None, record.signal
        error = f"killed by signal {record.signal}"
    else:
        code, sig = record.exit_code, None
        state = "succeeded" if code == 0 else "failed"
        error = None if code == 0 else f"exited with code {code}"
    if oom and state != "succeeded":
        error = "out of memory: the kernel killed a process of the job at its memory limit"
    if cancelled:
        state, error = "cancelled", "cancelled on request"
    elif timed_out:
        state, error = "timed_out", "time limit reached"
    retry = (
        state == "failed"
        and attempts < max_attempts
        and (record is None or record.kind != "start_error")
    )
    return Outcome(state, code, sig, oom, error, retry)


def retry_delay_seconds(
    attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter: uniform in [b/2, b], b = min(cap, base * 2**(attempt-1))."""
    bound = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random.Random()).uniform(bound / 2, bound)  # noqa: S311 (jitter, not crypto)


def cpu_seconds(ns: int) -> Decimal:
    """Exact decimal seconds from kernel nanoseconds."""
    return Decimal(ns) / NS_PER_SECOND


def byte_seconds(peak_bytes: int, start_ns: int, end_ns: int) -> Decimal:
    """Memory integrated over a period with no samples inside it: peak times duration.

    This bounds the true integral from above; the sampler narrows it with real samples.
    """
    return Decimal(peak_bytes) * Decimal(max(0, end_ns - start_ns)) / NS_PER_SECOND
