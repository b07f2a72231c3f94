"""The one place nanoseconds, microseconds and timestamptz values are converted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler.timeconv import (
    NS_PER_SECOND,
    datetime_to_ns,
    datetime_to_us,
    ns_to_datetime,
    ns_to_seconds,
    truncate_us,
    us_to_datetime,
)


def test_ns_truncate_to_microseconds_towards_the_past() -> None:
    at = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
    ns = datetime_to_ns(at) + 999
    assert ns_to_datetime(ns) == at
    assert truncate_us(ns) == datetime_to_ns(at)
    assert datetime_to_us(at) == datetime_to_ns(at) // 1000
    assert us_to_datetime(datetime_to_us(at)) == at


def test_round_trip_is_exact_far_from_the_epoch() -> None:
    # A float of seconds loses microseconds here; the integer path must not.
    at = datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
    assert ns_to_datetime(datetime_to_ns(at)) == at
    assert datetime_to_ns(at + timedelta(microseconds=1)) - datetime_to_ns(at) == 1000


def test_before_the_epoch_and_seconds() -> None:
    assert ns_to_datetime(-1) == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert ns_to_seconds(3 * NS_PER_SECOND // 2) == 1.5
