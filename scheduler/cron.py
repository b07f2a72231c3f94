"""Cron expressions of schedules: 5 fields in an IANA time zone (pure: no I/O).

Parsing and the calendar arithmetic (month lengths, weekdays, daylight-saving jumps) are
croniter's; this module only fixes the accepted syntax (exactly five fields: croniter would
also take a sixth, seconds field) and turns its errors into messages a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from scheduler.errors import SchedulerError

FIELDS = 5
MAX_CRON_LENGTH = 200
MAX_TIMEZONE_LENGTH = 100


class CronError(SchedulerError):
    """The cron expression or time zone is not valid."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CronSpec:
    """A checked expression and its zone."""

    cron: str
    timezone: str

    def next_after(self, moment: datetime) -> datetime:
        """The first due time strictly after ``moment``, in UTC."""
        return next_after(self.cron, self.timezone, moment)


def zone(timezone: str) -> ZoneInfo:
    """The IANA zone named ``timezone``; CronError if there is none."""
    if not timezone or len(timezone) > MAX_TIMEZONE_LENGTH or "\0" in timezone:
        raise CronError(f"unknown time zone {timezone!r}: use a name such as UTC", "timezone")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        # ValueError: a path-like name ("../etc"), which zoneinfo refuses itself.
        raise CronError(
            f"unknown time zone {timezone!r}: use an IANA name such as UTC or Europe/Paris",
            "timezone",
        ) from exc


def check(cron: str, timezone: str, now: datetime | None = None) -> CronSpec:
    """Validate both and make sure the expression ever comes due (``0 0 31 2 *`` does not)."""
    if not isinstance(cron, str) or len(cron) > MAX_CRON_LENGTH or "\0" in cron:
        raise CronError(f"cron must be at most {MAX_CRON_LENGTH} characters", "cron")
    fields = cron.split()
    if len(fields) != FIELDS:
        raise CronError(
            f"cron must have 5 fields (minute hour day-of-month month day-of-week): got "
            f"{len(fields)} in {cron!r}",
            "cron",
        )
    zone(timezone)
    spec = CronSpec(" ".join(fields), timezone)
    spec.next_after(now or datetime.now(UTC))
    return spec


def next_after(cron: str, timezone: str, moment: datetime) -> datetime:
    """The first time ``cron`` comes due in ``timezone`` strictly after ``moment`` (UTC)."""
    if moment.tzinfo is None:
        raise ValueError("moment must be an aware datetime")
    if len(cron.split()) != FIELDS:
        raise CronError(f"cron must have 5 fields: got {cron!r}", "cron")
    local = moment.astimezone(zone(timezone))
    try:
        due = croniter(cron, local).get_next(datetime)
    except CroniterError as exc:
        # Bad fields, and expressions that never match ("failed to find next date").
        raise CronError(f"cron {cron!r} is not valid: {exc}", "cron") from exc
    except Exception as exc:
        # Anything else a parser of user text raises on odd input (a TypeError, an
        # IndexError) still means: this expression cannot be used. It must not end the agent.
        raise CronError(f"cron {cron!r} is not valid: {exc!r}", "cron") from exc
    return due.astimezone(UTC)
