"""Billing periods: the pure arithmetic that turns cumulative kernel counters into usage rows.

The sampler keeps, per running attempt, a :class:`Mark`: where its last committed period
ended and the cumulative counters at that instant. Each sweep turns (mark, new counters) into
one :class:`Period` (the deltas) and the next mark; the closing row at exit is the final
counters minus the last mark. Deltas of monotonic counters telescope, so the rows of an
attempt sum to the kernel's counters at exit exactly, however many sweeps there were.

Memory is billed per period at ``max(peak in period x length, trapezoid of the two end
samples)``: the sampler resets the kernel's peak at every period boundary (see
cgroups/counters.py), so the peak in a period is what the job held at its highest in it, and
releasing memory around a sample cannot lower the bill. Where the kernel cannot reset it
(cgroup v2 before Linux 6.12) the peak of a period is known only when the job's lifetime peak
rose in it; otherwise the trapezoid alone is billed (an estimate). A row's
``memory_peak_bytes`` is its period's peak (the lifetime peak where the period's is unknown),
so the highest of an attempt's rows is the attempt's peak.

Times are nanoseconds truncated to microseconds (Postgres' resolution) before any integral is
taken, so that each row's numbers follow from the row's own period as stored. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from scheduler.timeconv import NS_PER_SECOND, truncate_us


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


def held(peak_bytes: int | None, start_ns: int, end_ns: int) -> Decimal:
    """Byte-seconds of holding ``peak_bytes`` over [start, end] (0 when the peak is unknown)."""
    if peak_bytes is None:
        return Decimal(0)
    return Decimal(peak_bytes) * Decimal(max(0, end_ns - start_ns)) / NS_PER_SECOND


def known_peak(period_peak: int | None, mark: Mark, total: Counters) -> int | None:
    """The peak of the period since ``mark``: the kernel's (reset at the mark) when it has
    one, else the lifetime peak if it rose in the period (it was reached in it), else None."""
    if period_peak is not None:
        return period_peak
    if total.memory_peak_bytes > mark.counters.memory_peak_bytes:
        return total.memory_peak_bytes
    return None


def memory_bill(
    start_bytes: int | None, end_bytes: int, peak: int | None, start_ns: int, end_ns: int
) -> Decimal:
    """A period's billed byte-seconds: max(peak x length, the trapezoid estimate)."""
    return max(trapezoid(start_bytes, end_bytes, start_ns, end_ns), held(peak, start_ns, end_ns))


def advance(
    mark: Mark,
    *,
    at_ns: int,
    counters: Counters,
    memory_bytes: int,
    period_peak: int | None = None,
) -> tuple[Period, Mark]:
    """The period from ``mark`` to a sample taken at ``at_ns``, and the mark after it.

    ``period_peak``: the highest memory of the period (the kernel's peak, reset at the
    mark), None where the kernel cannot tell it.
    """
    end = max(truncate_us(at_ns), mark.end_ns)  # a wall clock stepping back cannot invert a row
    total = counters.at_least(mark.counters)
    if period_peak is not None and period_peak > total.memory_peak_bytes:
        # Reads whose rows were not kept (reset since) count in the attempt's peak too.
        total = replace(total, memory_peak_bytes=period_peak)
    peak = known_peak(period_peak, mark, total)
    period = Period(
        seq=mark.seq + 1,
        start_ns=mark.end_ns,
        end_ns=end,
        cpu_ns=total.cpu_ns - mark.counters.cpu_ns,
        memory_byte_seconds=memory_bill(mark.memory_bytes, memory_bytes, peak, mark.end_ns, end),
        memory_peak_bytes=total.memory_peak_bytes if peak is None else peak,
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
    mark: Mark,
    *,
    exec_ns: int,
    end_ns: int,
    counters: Counters,
    memory_bytes: int,
    period_peak: int | None = None,
) -> Period:
    """The closing row of an attempt: from the last period's end to the job's end.

    With no earlier row the period is the job's own run (exec to reaping) and its peak is
    the attempt's: memory is billed at that peak for the whole period (the rule of every
    period, with no sample inside). A sweep may have sampled the cgroup after the last
    process ended but before the agent reaped it: the closing row is then empty in time.
    """
    total = counters.at_least(mark.counters)
    if mark.rows == 0:
        start = truncate_us(exec_ns)
        end = max(truncate_us(end_ns), start)
        peak: int | None = max(total.memory_peak_bytes, period_peak or 0)
        byte_seconds = held(peak, start, end)
    else:
        start = mark.end_ns
        end = max(truncate_us(end_ns), start)
        peak = known_peak(period_peak, mark, total)
        byte_seconds = memory_bill(mark.memory_bytes, memory_bytes, peak, start, end)
    return Period(
        seq=0,
        start_ns=start,
        end_ns=end,
        cpu_ns=total.cpu_ns - mark.counters.cpu_ns,
        memory_byte_seconds=byte_seconds,
        memory_peak_bytes=total.memory_peak_bytes if peak is None else peak,
        io_read_bytes=total.io_read_bytes - mark.counters.io_read_bytes,
        io_write_bytes=total.io_write_bytes - mark.counters.io_write_bytes,
    )
