"""Billing periods: the pure arithmetic that turns cumulative kernel counters into usage rows.

The sampler keeps, per running attempt, a :class:`Mark`: where its last committed period
ended and the cumulative counters at that instant. Each sweep turns (mark, new counters) into
one :class:`Period` (the deltas) and the next mark; the closing row at exit is the final
counters minus the last mark. Deltas of monotonic counters telescope, so the rows of an
attempt sum to the kernel's counters at exit exactly, however many sweeps there were.

Times are nanoseconds truncated to microseconds (Postgres' resolution) before any integral is
taken, so that each row's numbers follow from the row's own period as stored. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

NS_PER_SECOND = 1_000_000_000


def truncate_us(ns: int) -> int:
    """``ns`` truncated to whole microseconds (what a timestamptz keeps)."""
    return ns // 1000 * 1000


@dataclass(frozen=True)
class Counters:
    """The cumulative counters that bill; all monotonic while the cgroup lives."""

    cpu_ns: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    memory_peak_bytes: int = 0

    def at_least(self, other: Counters) -> Counters:
        """Field-wise max: a counter never goes backwards in the books, even if re-read."""
        return Counters(
            cpu_ns=max(self.cpu_ns, other.cpu_ns),
            io_read_bytes=max(self.io_read_bytes, other.io_read_bytes),
            io_write_bytes=max(self.io_write_bytes, other.io_write_bytes),
            memory_peak_bytes=max(self.memory_peak_bytes, other.memory_peak_bytes),
        )


@dataclass(frozen=True)
class Mark:
    """Where an attempt's last committed period ended.

    ``seq`` is the job's last used row number (across attempts; 0 when none), ``rows`` the
    number of rows this attempt already has, ``end_ns`` the last period's end (or, with no
    rows yet, when the attempt was launched), ``counters`` the cumulative values there and
    ``memory_bytes`` memory.current there (None when unknown, e.g. after a restart).
    """

    seq: int
    rows: int
    end_ns: int
    counters: Counters
    memory_bytes: int | None

    @classmethod
    def fresh(cls, launched_ns: int, seq: int = 0) -> Mark:
        """An attempt that has just been launched: nothing counted yet, an empty cgroup."""
        return cls(
            seq=seq, rows=0, end_ns=truncate_us(launched_ns), counters=Counters(), memory_bytes=0
        )


@dataclass(frozen=True)
class Period:
    """One usage row's numbers (``seq`` is 0 for a closing row: the database numbers it)."""

    seq: int
    start_ns: int
    end_ns: int
    cpu_ns: int
    memory_byte_seconds: Decimal
    memory_peak_bytes: int
    io_read_bytes: int
    io_write_bytes: int

    @property
    def cpu_seconds(self) -> Decimal:
        """cpu as exact decimal seconds."""
        return Decimal(self.cpu_ns) / NS_PER_SECOND


def trapezoid(start_bytes: int | None, end_bytes: int, start_ns: int, end_ns: int) -> Decimal:
    """Byte-seconds of memory over [start, end] from its two end values (linear between).

    An unknown start value (a period resumed after a restart) counts as the end value.
    The result is exact: an integer divided by 2 * 10**9 has a finite decimal expansion.
    """
    first = end_bytes if start_bytes is None else start_bytes
    return Decimal((first + end_bytes) * max(0, end_ns - start_ns)) / (2 * NS_PER_SECOND)


def advance(
    mark: Mark, *, at_ns: int, counters: Counters, memory_bytes: int
) -> tuple[Period, Mark]:
    """The period from ``mark`` to a sample taken at ``at_ns``, and the mark after it."""
    end = max(truncate_us(at_ns), mark.end_ns)  # a wall clock stepping back cannot invert a row
    total = counters.at_least(mark.counters)
    period = Period(
        seq=mark.seq + 1,
        start_ns=mark.end_ns,
        end_ns=end,
        cpu_ns=total.cpu_ns - mark.counters.cpu_ns,
        memory_byte_seconds=trapezoid(mark.memory_bytes, memory_bytes, mark.end_ns, end),
        memory_peak_bytes=total.memory_peak_bytes,
        io_read_bytes=total.io_read_bytes - mark.counters.io_read_bytes,
        io_write_bytes=total.io_write_bytes - mark.counters.io_write_bytes,
    )
    after = replace(
        mark,
        seq=mark.seq + 1,
        rows=mark.rows + 1,
        end_ns=end,
        counters=total,
        memory_bytes=memory_bytes,
    )
    return period, after


def close(
    mark: Mark, *, exec_ns: int, end_ns: int, counters: Counters, memory_bytes: int
) -> Period:
    """The closing row of an attempt: from the last period's end to the job's end.

    With no earlier row the period is the job's own run (exec to reaping) and, lacking any
    sample inside it, memory is billed at its peak for the whole period (an upper bound; such
    jobs are shorter than one sampling period). A sweep may have sampled the cgroup after the
    last process ended but before the agent reaped it: the closing row is then empty in time.
    """
    total = counters.at_least(mark.counters)
    if mark.rows == 0:
        start = truncate_us(exec_ns)
        end = max(truncate_us(end_ns), start)
        byte_seconds = Decimal(total.memory_peak_bytes) * Decimal(end - start) / NS_PER_SECOND
    else:
        start = mark.end_ns
        end = max(truncate_us(end_ns), start)
        byte_seconds = trapezoid(mark.memory_bytes, memory_bytes, start, end)
    return Period(
        seq=0,
        start_ns=start,
        end_ns=end,
        cpu_ns=total.cpu_ns - mark.counters.cpu_ns,
        memory_byte_seconds=byte_seconds,
        memory_peak_bytes=total.memory_peak_bytes,
        io_read_bytes=total.io_read_bytes - mark.counters.io_read_bytes,
        io_write_bytes=total.io_write_bytes - mark.counters.io_write_bytes,
    )
