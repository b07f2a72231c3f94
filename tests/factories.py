"""Rows made by hand for tests that need a claimed job without claiming one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from scheduler.jobs import Job, JobId


def job(job_id: int = 7, **changes: Any) -> Job:
    """A claimed first attempt of `true` for tenant acme, one core; ``changes`` override."""
    made = Job(
        id=JobId(job_id),
        tenant="acme",
        name="",
        argv=("true",),
        env={},
        cwd="/",
        cpu=Decimal(1),
        memory_bytes=1 << 28,
        pids_max=100,
        timeout_seconds=None,
        priority=0,
        max_attempts=1,
        attempts=1,
        desired_state="running",
        submitted_at=datetime.now(UTC),
    )
    return replace(made, **changes) if changes else made
