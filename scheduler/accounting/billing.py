"""Billing export against Postgres: read a window's rows and the rates, price, render."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, date, datetime

import asyncpg

from scheduler.accounting.export import (
    FORMATS,
    Format,
    UsageRow,
    group_by_label,
    price,
    render,
)
from scheduler.accounting.rates import Rate
from scheduler.db.pool import Conn
from scheduler.errors import SchedulerError
from scheduler.repos import usage as usage_repo


class BadWindow(SchedulerError):
    """The billing window is invalid."""


class UnknownTenant(SchedulerError):
    """No such tenant."""


def parse_instant(text: str) -> datetime:
    """A UTC instant from ``2026-11-01`` or ``2026-11-01T12:00[:00][Z|+hh:mm]``.

    A value without an offset is UTC (billing periods are UTC, as in FOCUS).
    """
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time: use e.g. 2026-11-01 or 2026-11-01T12:00:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_window(start: datetime, end: datetime) -> None:
    """Refuse an empty or inverted window with a message naming both ends."""
    if end <= start:
        raise BadWindow(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")


def check_format(fmt: str) -> Format:
    """The export format, or an error listing the valid ones."""
    for known in FORMATS:
        if fmt == known:
            return known
    raise BadWindow(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


# --group-by label:KEY: a label key as migrations/0018 bounds them (1-128 bytes, no control
# characters).
GROUP_BY = re.compile(r"label:([^\x00-\x1f\x7f]{1,128})")


def check_group_by(text: str) -> str:
    """The label key of ``label:KEY``, or an error saying what is expected."""
    found = GROUP_BY.fullmatch(text)
    if found is None or len(found.group(1).encode()) > 128:
        raise BadWindow(
            f"--group-by {text[:140]!r}: expected label:KEY, a label key of 1-128 bytes "
            "without control characters (e.g. label:team)"
        )
    return found.group(1)


def month_start(month: date) -> datetime:
    """The first instant (UTC) of the month of ``month``."""
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def next_month(month: date) -> datetime:
    """The first instant (UTC) of the month after ``month``."""
    if month.month == 12:
        return datetime(month.year + 1, 1, 1, tzinfo=UTC)
    return datetime(month.year, month.month + 1, 1, tzinfo=UTC)


def rate_from_row(row: asyncpg.Record) -> Rate:
    """A :class:`Rate` from a billing_rates row."""
    return Rate(
        id=int(row["id"]),
        resource=row["resource"],
        tenant=row["tenant"],
        price=row["price"],
        currency=row["currency"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
    )


async def export(
    conn: Conn,
    *,
    start: datetime,
    end: datetime,
    fmt: str,
    tenant: str | None = None,
) -> str:
    """The billing export of [start, end) in ``fmt`` (csv, json or focus)."""
    text, _ = await export_counted(conn, start=start, end=end, fmt=fmt, tenant=tenant)
    return text


async def export_counted(
    conn: Conn,
    *,
    start: datetime,
    end: datetime,
    fmt: str,
    tenant: str | None = None,
    group_by: str | None = None,
) -> tuple[str, int]:
    """:func:`export` and the number of usage rows it priced (0: the window found nothing).

    ``group_by``: ``label:KEY`` sums the costs by that label's value instead (csv or json).
    """
    check_window(start, end)
    chosen = check_format(fmt)
    key = None if group_by is None else check_group_by(group_by)
    if key is not None and chosen == "focus":
        raise BadWindow("--group-by sums csv or json; FOCUS rows carry the labels in Tags")
    # One snapshot for rows and rates: a rate inserted meanwhile cannot half-apply.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if tenant is not None and not await usage_repo.tenant_exists(conn, tenant):
            raise UnknownTenant(
                f"unknown tenant {tenant!r}: SELECT name FROM scheduler.tenants lists them"
            )
        rates = [rate_from_row(r) for r in await usage_repo.rates(conn)]
        rows = await window_rows(conn, start, end, tenant)
    lines = price(rows, rates, start=start, end=end)
    if key is not None:
        text = group_by_label(lines, key, chosen, start=start, end=end, tenant=tenant)
        return text, len(rows)
    return render(lines, chosen, start=start, end=end, tenant=tenant), len(rows)


async def window_rows(
    conn: Conn, start: datetime, end: datetime, tenant: str | None
) -> list[UsageRow]:
    """The usage rows [start, end) bills (in the caller's transaction): those whose period
    ends in it, but for late ones of a closed month, and the late rows billed in a month
    that starts in it (billed at its first instant: the month whose statement sealed them,
    or the first open month while none has)."""
    rows = [usage_row(r) for r in await usage_repo.billing_usage(conn, start, end, tenant)]
    closed = await usage_repo.closed_range(conn)
    if closed is None or closed["first"] is None:
        return rows
    open_from = next_month(closed["last"])
    # Late rows are billed at a month start in (first closed, first open]: read them only
    # when the window holds one (a daily export mid-month never scans the closed months).
    lowest = max(start, next_month(closed["first"]))
    month = lowest.astimezone(UTC).date().replace(day=1)
    first_start = month_start(month) if month_start(month) >= lowest else next_month(month)
    if first_start >= end or first_start > open_from:
        return rows
    late = await usage_repo.late_usage(conn, month_start(closed["first"]), open_from, tenant)
    for r in late:
        billed = open_from if r["billed_period"] is None else month_start(r["billed_period"])
        if start <= billed < end:
            rows.append(usage_row(r, billed_at=billed))
    return rows


def usage_row(r: asyncpg.Record, billed_at: datetime | None = None) -> UsageRow:
    """A row of the ``billing_usage`` query as the export prices it (``billed_at``: a late
    row's billing instant)."""
    return UsageRow(
        job_id=int(r["job_id"]),
        job_name=r["job_name"],
        tenant=r["tenant"],
        period_end=r["period_end"],
        cpu_seconds=r["cpu_seconds"],
        memory_byte_seconds=r["memory_byte_seconds"],
        io_read_bytes=int(r["io_read_bytes"]),
        io_write_bytes=int(r["io_write_bytes"]),
        cpu_reserved=r["cpu_reserved"],
        memory_reserved_bytes=int(r["memory_reserved_bytes"]),
        wall_seconds=r["wall_seconds"],
        labels=r["labels"],
        seq=int(r["seq"]),
        billed_at=billed_at,
    )
