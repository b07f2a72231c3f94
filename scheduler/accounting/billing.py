"""Billing export against Postgres: read a window's rows and the rates, price, render."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import asyncpg

from scheduler.accounting.export import FORMATS, Format, UsageRow, price, render
from scheduler.accounting.rates import Rate
from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.errors import SchedulerError


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
) -> tuple[str, int]:
    """:func:`export` and the number of usage rows it priced (0: the window found nothing)."""
    check_window(start, end)
    chosen = check_format(fmt)
    # One snapshot for rows and rates: a rate inserted meanwhile cannot half-apply.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if tenant is not None and not await conn.fetchval(q("billing_tenant_exists"), tenant):
            raise UnknownTenant(
                f"unknown tenant {tenant!r}: SELECT name FROM scheduler.tenants lists them"
            )
        rates = [rate_from_row(r) for r in await conn.fetch(q("billing_rates"))]
        records = await conn.fetch(q("billing_usage"), start, end, tenant)
    rows = [usage_row(r) for r in records]
    lines = price(rows, rates, start=start, end=end)
    return render(lines, chosen, start=start, end=end, tenant=tenant), len(rows)


def usage_row(r: asyncpg.Record) -> UsageRow:
    """A row of the ``billing_usage`` query as the export prices it."""
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
    )
