"""Billing periods: deltas telescope to the final counters, periods are contiguous."""

from __future__ import annotations

import itertools
import random
from decimal import Decimal

from scheduler.accounting.periods import (
    Counters,
    Mark,
    Period,
    advance,
    close,
    trapezoid,
)
from scheduler.agent.sampler import counters_of, covering
from scheduler.cgroups.base import Usage
from scheduler.timeconv import truncate_us

S = 1_000_000_000


def test_trapezoid_is_exact_and_linear() -> None:
    assert trapezoid(0, 100, 0, 2 * S) == Decimal(100)
    assert trapezoid(100, 100, 0, S // 2) == Decimal(50)
    # 3 bytes over 1 ns: 1.5e-9 byte-seconds, exactly.
    assert trapezoid(1, 2, 0, 1) == Decimal("1.5E-9")
    # An unknown start value counts as the end value.
    assert trapezoid(None, 10, 0, S) == Decimal(10)
    assert trapezoid(5, 5, 10, 5) == 0


def test_advance_bills_the_delta_and_moves_the_mark() -> None:
    mark = Mark.fresh(1_000_000_999)
    assert mark.end_ns == 1_000_000_000
    period, after = advance(
        mark, at_ns=2_000_000_500, counters=Counters(cpu_ns=7, io_read_bytes=3), memory_bytes=10
    )
    assert period == Period(
        seq=1,
        start_ns=1_000_000_000,
        end_ns=2_000_000_000,
        cpu_ns=7,
        memory_byte_seconds=Decimal(5),
        memory_peak_bytes=0,
        io_read_bytes=3,
        io_write_bytes=0,
    )
    assert (after.seq, after.rows, after.end_ns, after.memory_bytes) == (1, 1, 2_000_000_000, 10)
    period2, _ = advance(
        after, at_ns=3 * S, counters=Counters(cpu_ns=20, io_read_bytes=3), memory_bytes=10
    )
    assert (period2.seq, period2.start_ns, period2.cpu_ns, period2.io_read_bytes) == (
        2,
        2 * S,
        13,
        0,
    )
    assert period2.memory_byte_seconds == 10


def test_a_clock_stepping_back_gives_an_empty_period_not_a_negative_one() -> None:
    mark = Mark.fresh(5 * S)
    period, after = advance(mark, at_ns=4 * S, counters=Counters(cpu_ns=1), memory_bytes=0)
    assert period.start_ns == period.end_ns == 5 * S
    assert period.cpu_ns == 1
    assert after.end_ns == 5 * S


def test_a_counter_read_lower_than_the_mark_never_bills_negative() -> None:
    mark = Mark(seq=3, rows=2, end_ns=S, counters=Counters(cpu_ns=100), memory_bytes=0)
    period, after = advance(mark, at_ns=2 * S, counters=Counters(cpu_ns=90), memory_bytes=0)
    assert period.cpu_ns == 0
    assert after.counters.cpu_ns == 100


def test_close_without_rows_bills_the_run_at_its_peak() -> None:
    mark = Mark.fresh(S)
    closing = close(
        mark,
        exec_ns=S + 2_500,
        end_ns=S + 5_000_400,
        counters=Counters(cpu_ns=1234, memory_peak_bytes=1000),
        memory_bytes=0,
    )
    assert (closing.start_ns, closing.end_ns) == (S + 2_000, S + 5_000_000)
    assert closing.cpu_ns == 1234
    assert closing.memory_byte_seconds == Decimal(1000) * Decimal(4_998_000) / S
    assert closing.memory_peak_bytes == 1000


def test_close_after_rows_starts_at_the_last_period_end() -> None:
    mark = Mark(
        seq=4,
        rows=4,
        end_ns=10 * S,
        counters=Counters(cpu_ns=500, io_write_bytes=8, memory_peak_bytes=4096),
        memory_bytes=2000,
    )
    closing = close(
        mark,
        exec_ns=S,
        end_ns=11 * S,
        counters=Counters(cpu_ns=800, io_write_bytes=8, memory_peak_bytes=8192),
        memory_bytes=0,
    )
    assert (closing.start_ns, closing.end_ns) == (10 * S, 11 * S)
    assert (closing.cpu_ns, closing.io_write_bytes, closing.memory_peak_bytes) == (300, 0, 8192)
    # The lifetime peak rose in the closing period, so it was reached in it: 8192 B for 1 s
    # beats the trapezoid's (2000 + 0) / 2.
    assert closing.memory_byte_seconds == 8192
    # With a peak that did not rise and is not known, the trapezoid alone is billed.
    flat = close(
        mark,
        exec_ns=S,
        end_ns=11 * S,
        counters=Counters(cpu_ns=800, io_write_bytes=8, memory_peak_bytes=4096),
        memory_bytes=0,
    )
    assert flat.memory_byte_seconds == 1000
    # The exit happened before the last sweep's instant: an empty closing period.
    late = close(mark, exec_ns=S, end_ns=9 * S, counters=Counters(cpu_ns=500), memory_bytes=0)
    assert late.start_ns == late.end_ns == 10 * S


def test_rows_sum_to_the_final_counters_for_any_sampling() -> None:
    rng = random.Random(4)
    for _ in range(200):
        mark = Mark.fresh(rng.randrange(10**18))
        cpu = io_r = io_w = peak = 0
        at = mark.end_ns
        rows: list[Period] = []
        for _ in range(rng.randrange(0, 12)):
            cpu += rng.randrange(0, 10**9)
            io_r += rng.randrange(0, 10**6)
            io_w += rng.randrange(0, 10**6)
            peak = max(peak, rng.randrange(0, 10**9))
            at += rng.randrange(0, 2 * S)
            period, mark = advance(
                mark,
                at_ns=at,
                counters=Counters(cpu, io_r, io_w, peak),
                memory_bytes=rng.randrange(10**9),
            )
            rows.append(period)
        cpu += rng.randrange(0, 10**6)
        end = at + rng.randrange(-S, S)
        rows.append(
            close(
                mark,
                exec_ns=rows[0].start_ns if rows else mark.end_ns,
                end_ns=end,
                counters=Counters(cpu, io_r, io_w, peak),
                memory_bytes=0,
            )
        )
        assert sum(r.cpu_ns for r in rows) == cpu
        assert sum(r.cpu_seconds for r in rows) == Decimal(cpu) / S
        assert sum(r.io_read_bytes for r in rows) == io_r
        assert sum(r.io_write_bytes for r in rows) == io_w
        assert max(r.memory_peak_bytes for r in rows) == peak
        for before, after in itertools.pairwise(rows):
            assert after.start_ns == before.end_ns
        assert all(r.end_ns >= r.start_ns for r in rows)
        assert [r.seq for r in rows[:-1]] == list(range(1, len(rows)))


def test_truncate_us() -> None:
    assert truncate_us(1_999) == 1_000
    assert truncate_us(0) == 0


def test_totals_cover_what_the_rows_already_billed() -> None:
    mark = Mark(
        seq=2,
        rows=2,
        end_ns=S,
        counters=Counters(cpu_ns=5, io_read_bytes=1, memory_peak_bytes=9),
        memory_bytes=0,
    )
    # A failed final read (all zeros) must not leave the rows above the job's totals.
    usage = covering(Usage(oom_kills=1), mark)
    assert (usage.cpu_ns, usage.io_read_bytes, usage.memory_peak_bytes, usage.oom_kills) == (
        5,
        1,
        9,
        1,
    )
    closing = close(mark, exec_ns=0, end_ns=2 * S, counters=counters_of(usage), memory_bytes=0)
    assert closing.cpu_ns == 0
    assert covering(Usage(cpu_ns=7), mark).cpu_ns == 7


def test_a_period_bills_its_peak_however_memory_moved_around_the_samples() -> None:
    """The evasion: 300 MiB held between samples, released at each one. The trapezoid of
    the samples sees nothing; the kernel's peak, reset at every sample, sees it all."""
    mib = 1 << 20
    mark = Mark.fresh(0)
    billed = Decimal(0)
    for k in range(1, 11):
        period, mark = advance(
            mark,
            at_ns=k * S,
            counters=Counters(memory_peak_bytes=300 * mib),
            memory_bytes=mib,  # what the sample sees: memory released just before it
            period_peak=300 * mib,
        )
        assert period.memory_peak_bytes == 300 * mib
        billed += period.memory_byte_seconds
    assert billed == 300 * mib * 10
    # The same samples without the period's peak (a kernel that cannot reset it): the peak
    # is known in the first period only (the lifetime peak rose there); after, the estimate.
    mark = Mark.fresh(0)
    rows = []
    for k in range(1, 4):
        period, mark = advance(
            mark, at_ns=k * S, counters=Counters(memory_peak_bytes=300 * mib), memory_bytes=mib
        )
        rows.append(period.memory_byte_seconds)
    assert rows == [Decimal(300 * mib), Decimal(mib), Decimal(mib)]


def test_a_short_job_is_billed_at_its_peak_and_a_known_closing_peak_counts() -> None:
    mark = Mark.fresh(0)
    only = close(
        mark, exec_ns=0, end_ns=S // 2, counters=Counters(memory_peak_bytes=4000), memory_bytes=0
    )
    assert only.memory_byte_seconds == 2000
    mark = Mark(seq=1, rows=1, end_ns=S, counters=Counters(memory_peak_bytes=9000), memory_bytes=0)
    closing = close(
        mark,
        exec_ns=0,
        end_ns=3 * S,
        counters=Counters(memory_peak_bytes=9000),
        memory_bytes=0,
        period_peak=5000,
    )
    assert (closing.memory_byte_seconds, closing.memory_peak_bytes) == (Decimal(10000), 5000)
