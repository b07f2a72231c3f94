"""The counting rules themselves, on rows made by hand: each kind of damage is counted where
the docstring of counts.py says, so a fault test cannot pass by counting nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.faults.counts import Counts, Expect, FaultCounts, assert_counts, count

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def job(
    state: str = "succeeded", attempts: int = 1, cpu: str = "0.3", **more: Any
) -> dict[str, Any]:
    return {
        "id": 1,
        "state": state,
        "attempts": attempts,
        "error": None,
        "oom_killed": False,
        "cpu_seconds": Decimal(cpu),
        "io_read_bytes": 0,
        "io_write_bytes": 0,
        "memory_peak_bytes": 100,
        **more,
    }


def row(
    seq: int, attempt: int, start: int, end: int, cpu: str, final: bool = False
) -> dict[str, Any]:
    return {
        "seq": seq,
        "attempt": attempt,
        "period_start": T0 + timedelta(seconds=start),
        "period_end": T0 + timedelta(seconds=end),
        "cpu_seconds": Decimal(cpu),
        "memory_byte_seconds": Decimal(0),
        "memory_peak_bytes": 100,
        "io_read_bytes": 0,
        "io_write_bytes": 0,
        "final": final,
    }


GOOD_ROWS = [row(1, 1, 0, 1, "0.1"), row(2, 1, 1, 2, "0.2", final=True)]


def counted(
    j: dict[str, Any],
    rows: list[dict[str, Any]],
    runs: list[int],
    expect: Expect | None = None,
    hit: dict[int, int] | None = None,
) -> FaultCounts:
    return count(
        "unit",
        {1: j},
        {1: rows},
        {1: runs},
        {1: expect or Expect()},
        {1: 1} if hit is None else hit,
    )


def test_a_job_that_ended_well_after_the_fault_is_recovered() -> None:
    result = counted(job(), GOOD_ROWS, [1])
    assert (result.jobs, result.billing) == (Counts(recovered=1), Counts(recovered=1))
    assert_counts(result)


def test_a_fault_that_hit_nothing_cannot_pass() -> None:
    result = counted(job(), GOOD_ROWS, [1], hit={})
    assert (result.jobs, result.billing) == (Counts(), Counts())
    with pytest.raises(AssertionError, match="hit no jobs"):
        assert_counts(result)


def test_a_job_still_running_is_lost() -> None:
    result = counted(job("running"), GOOD_ROWS[:1], [1])
    assert result.jobs == Counts(lost=1)
    assert result.billing == Counts()  # its attempt has not ended: no closing row owed yet
    with pytest.raises(AssertionError, match="lost"):
        assert_counts(result)


@pytest.mark.parametrize("runs", [[1, 1], [1, 2], [2]])
def test_a_command_that_ran_twice_or_under_an_unclaimed_attempt_is_duplicated(
    runs: list[int],
) -> None:
    assert counted(job(), GOOD_ROWS, runs).jobs.duplicated == 1


def test_a_retry_the_test_expects_is_not_a_duplicate() -> None:
    rows = [row(1, 1, 0, 1, "0", final=True), row(2, 2, 3, 4, "0.3", final=True)]
    result = counted(job(attempts=2), rows, [1, 2], Expect(runs=2))
    assert result.jobs == Counts(recovered=1)


@pytest.mark.parametrize(
    ("state", "more", "expect"),
    [
        ("failed", {}, Expect()),
        ("lost", {}, Expect()),
        ("failed", {}, Expect("failed", oom_killed=True)),
        ("succeeded", {"oom_killed": True}, Expect(oom_killed=False)),
    ],
)
def test_a_job_ending_otherwise_than_expected_is_unexpected(
    state: str, more: dict[str, Any], expect: Expect
) -> None:
    assert counted(job(state, **more), GOOD_ROWS, [1], expect).jobs.unexpected == 1


def test_a_job_that_never_ran_yet_succeeded_is_unexpected() -> None:
    assert counted(job(), GOOD_ROWS, []).jobs.unexpected == 1


def test_an_ended_attempt_without_a_final_row_is_a_lost_bill() -> None:
    rows = [row(1, 1, 0, 1, "0"), row(2, 2, 3, 4, "0.3", final=True)]
    result = counted(job(attempts=2), rows, [1, 2], Expect(runs=2), hit={1: 1})
    assert result.billing == Counts(lost=1)


def test_rows_that_do_not_add_up_to_the_totals_are_a_duplicated_bill() -> None:
    rows = [row(1, 1, 0, 1, "0.2"), row(2, 1, 1, 2, "0.2", final=True)]
    assert counted(job(), rows, [1]).billing == Counts(duplicated=1)


@pytest.mark.parametrize(
    "rows",
    [
        [row(1, 1, 0, 1, "0.1"), row(2, 1, 2, 3, "0.2", final=True)],  # a gap
        [row(1, 1, 0, 1, "0.1", final=True), row(2, 1, 1, 2, "0.2")],  # after the final row
        [row(1, 1, 1, 0, "0.1"), row(2, 1, 0, 2, "0.2", final=True)],  # ends before it starts
        [row(2, 1, 0, 1, "0.1"), row(3, 1, 1, 2, "0.2", final=True)],  # numbered from 2
        [*GOOD_ROWS, row(3, 2, 5, 6, "0", final=True)],  # an attempt never claimed
    ],
)
def test_malformed_rows_are_unexpected(rows: list[dict[str, Any]]) -> None:
    assert counted(job(), rows, [1]).billing.unexpected >= 1


def test_billing_an_attempt_whose_command_never_ran_is_unexpected() -> None:
    zero = [row(1, 1, 0, 0, "0", final=True), row(2, 2, 3, 4, "0.3", final=True)]
    assert counted(job(attempts=2), zero, [2]).billing == Counts(recovered=1)
    billed = [row(1, 1, 0, 1, "0.1", final=True), row(2, 2, 3, 4, "0.3", final=True)]
    assert counted(job(attempts=2), billed, [2]).billing == Counts(unexpected=1)
