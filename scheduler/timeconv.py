"""Nanoseconds, microseconds and timestamptz values, converted in one place.

The kernel and the monitor count in nanoseconds; Postgres keeps microseconds. Every
conversion between them (and the unit constants) lives here, so a rounding rule is written
once: towards the past, to whole microseconds, the way a timestamptz would store it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NS_PER_US = 1_000
US_PER_SECOND = 1_000_000
NS_PER_SECOND = 1_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def truncate_us(ns: int) -> int:
    """``ns`` truncated to whole microseconds (what a timestamptz keeps)."""
    return ns // NS_PER_US * NS_PER_US


def us_to_datetime(us: int) -> datetime:
    """A timestamptz value from microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=us)


def ns_to_datetime(ns: int) -> datetime:
    """A timestamptz value from nanoseconds since the epoch (truncated to microseconds)."""
    return us_to_datetime(ns // NS_PER_US)


def datetime_to_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    return (value - EPOCH) // _ONE_US


def datetime_to_ns(value: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact, microsecond-based)."""
    return datetime_to_us(value) * NS_PER_US


def ns_to_seconds(ns: int) -> float:
    """Nanoseconds as float seconds (for clocks and metrics, never for billing)."""
    return ns / NS_PER_SECOND
