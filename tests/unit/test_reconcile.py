"""Reconciliation checks on hand-made rows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from scheduler.accounting.reconcile import check_job, check_tenant, subtree, tenant_chains

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def job(**kw: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": 7,
        "attempts": 1,
        "cpu_seconds": Decimal("0.3"),
        "io_read_bytes": 10,
        "io_write_bytes": 0,
        "memory_peak_bytes": 100,
    }
    values.update(kw)
    return values


def row(
    seq: int,
    start: int,
    end: int,
    cpu: str,
    *,
    final: bool = False,
    attempt: int = 1,
    peak: int = 100,
    read: int = 5,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "attempt": attempt,
        "period_start": T0 + timedelta(seconds=start),
        "period_end": T0 + timedelta(seconds=end),
        "cpu_seconds": Decimal(cpu),
        "memory_peak_bytes": peak,
        "io_read_bytes": read,
        "io_write_bytes": 0,
        "final": final,
    }


def test_rows_that_add_up_pass() -> None:
    rows = [row(1, 0, 1, "0.1", peak=50), row(2, 1, 2, "0.2", final=True)]
    assert check_job(job(), rows) == []


def test_every_discrepancy_is_listed() -> None:
    rows = [row(1, 0, 1, "0.1"), row(3, 2, 3, "0.1", final=True)]
    problems = [str(d) for d in check_job(job(), rows)]
    assert problems == [
        "job 7: rows are numbered [1, 3], expected 1..2",
        "job 7: attempt 1: row 3 starts at 2026-11-01T00:00:02+00:00, row 1 ended at "
        "2026-11-01T00:00:01+00:00 (periods must be contiguous)",
        "job 7: cpu_seconds: rows sum to 0.2, the job's total is 0.3",
    ]


def test_closing_rows_are_counted_per_attempt() -> None:
    rows = [row(1, 0, 1, "0.1", final=True), row(2, 1, 2, "0.2")]
    assert [d.problem for d in check_job(job(), rows)] == [
        "attempt 1 has rows after its closing row"
    ]
    two = [row(1, 0, 1, "0.1", final=True), row(2, 1, 2, "0.2", final=True)]
    assert "attempt 1 has 2 closing rows, expected 1" in [d.problem for d in check_job(job(), two)]


def test_only_the_last_attempt_is_held_to_the_totals() -> None:
    rows = [
        row(1, 0, 1, "5", final=True, read=99),
        row(2, 5, 6, "0.3", final=True, attempt=2, read=10),
    ]
    assert check_job(job(attempts=2), rows) == []
    assert [d.problem for d in check_job(job(attempts=2), rows[:1])] == [
        "its last attempt (2) has no usage rows"
    ]


def test_a_never_started_job_has_no_rows() -> None:
    assert check_job(job(attempts=0, cpu_seconds=None), []) == []


def test_tenant_cpu_bounds() -> None:
    assert check_tenant("a", Decimal(5), Decimal(5), Decimal(0)) == []
    assert check_tenant("a", Decimal(6), Decimal(5), Decimal(1)) == []
    assert (
        "more than its cgroup counted"
        in check_tenant("a", Decimal(4), Decimal(5), Decimal(0))[0].problem
    )
    assert (
        "running jobs account for at most 0.5"
        in check_tenant("a", Decimal(6), Decimal(5), Decimal("0.5"))[0].problem
    )


def test_tenant_cpu_rounding_is_allowed_and_named() -> None:
    # v2: three job cgroups each truncated to 1 us, the tenant's exact sum truncated once.
    us = Decimal("0.000001")
    assert check_tenant("a", Decimal(5) + 2 * us, Decimal(5), Decimal(0), 3 * us) == []
    over = check_tenant("a", Decimal(5) + 4 * us, Decimal(5), Decimal(0), 3 * us)
    assert "the counters' rounding for at most 0.000003" in over[0].problem
    # Rounding never excuses billing more than the kernel counted.
    assert check_tenant("a", Decimal(5) - us, Decimal(5), Decimal(0), 3 * us) != []


def test_tenant_tree() -> None:
    tenants = [("default", None), ("acme", None), ("team", "acme"), ("sub", "team")]
    assert subtree(tenants, "acme") == {"acme", "team", "sub"}
    assert tenant_chains(tenants)["sub"] == ("acme", "team", "sub")


def test_a_final_job_without_totals_or_end_is_reported() -> None:
    # What a forced `UPDATE scheduler.jobs SET state = 'cancelled'` leaves behind.
    forged = job(state="cancelled", cpu_seconds=None, memory_peak_bytes=None, finished_at=None)
    problems = [d.problem for d in check_job(forged, [])]
    assert "finished as cancelled without finished_at" in problems
    assert "finished as cancelled without totals (cpu_seconds, memory_peak_bytes unset)" in problems
    assert not check_job(job(finished_at=T0), [row(1, 0, 1, "0.3", final=True, read=10)])
