"""The pure cron rules of schedules: five fields, IANA zones, daylight-saving days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scheduler.api.openapi import document
from scheduler.cron import CronError, check, next_after
from scheduler.db.migrate import load_migrations
from scheduler.schedules import OVERLAPS, SCHEDULE_NAME

NOON = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)


def test_next_due_time_is_strictly_after_and_in_utc() -> None:
    assert next_after("* * * * *", "UTC", NOON) == datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    on_the_minute = datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    assert next_after("* * * * *", "UTC", on_the_minute) == datetime(2026, 6, 1, 12, 2, tzinfo=UTC)
    # 09:00 in Tokyo (UTC+9) is midnight UTC; weekdays only: 2026-06-06 is a Saturday.
    friday = datetime(2026, 6, 5, 1, 0, tzinfo=UTC)
    assert next_after("0 9 * * mon-fri", "Asia/Tokyo", friday) == datetime(
        2026, 6, 8, 0, 0, tzinfo=UTC
    )


def test_daylight_saving_days_in_paris() -> None:
    # 02:30 does not exist on 2026-03-29: it runs at 03:00 CEST (01:00 UTC).
    spring = datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert next_after("30 2 * * *", "Europe/Paris", spring) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )
    # 02:30 happens twice on 2026-10-25: once in each offset (documented).
    autumn = datetime(2026, 10, 24, 12, tzinfo=UTC)
    first = next_after("30 2 * * *", "Europe/Paris", autumn)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert next_after("30 2 * * *", "Europe/Paris", first) == datetime(
        2026, 10, 25, 1, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("cron", "timezone", "field", "message"),
    [
        ("* * * *", "UTC", "cron", "5 fields"),
        ("* * * * * *", "UTC", "cron", "5 fields"),
        ("@hourly", "UTC", "cron", "5 fields"),
        ("60 * * * *", "UTC", "cron", "out of range"),
        ("* * * * 8", "UTC", "cron", "not valid"),
        ("0 0 31 2 *", "UTC", "cron", "not valid"),
        ("x" * 300, "UTC", "cron", "at most 200"),
        ("* * * * *", "Mars/Olympus", "timezone", "unknown time zone"),
        ("* * * * *", "../../etc/passwd", "timezone", "unknown time zone"),
        ("* * * * *", "", "timezone", "unknown time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused(
    cron: str, timezone: str, field: str, message: str
) -> None:
    with pytest.raises(CronError, match=message) as caught:
        check(cron, timezone, NOON)
    assert caught.value.field == field


def test_whitespace_is_normalised() -> None:
    assert check("  */5   *  * * * ", "UTC", NOON).cron == "*/5 * * * *"


def test_one_schedule_name_rule_and_overlap_list_everywhere() -> None:
    [migration] = [m for m in load_migrations() if m.name == "schedules"]
    assert f"'{SCHEDULE_NAME.pattern}'" in migration.sql
    assert "overlap IN (" + ", ".join(f"'{o}'" for o in OVERLAPS) + ")" in migration.sql
    create = document()["components"]["schemas"]["ScheduleCreate"]["properties"]
    assert create["name"]["pattern"] == SCHEDULE_NAME.pattern
    assert create["overlap"]["enum"] == list(OVERLAPS)
