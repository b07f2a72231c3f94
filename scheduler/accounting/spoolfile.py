"""The on-disk format of spooled usage rows, and the columns both writers send to Postgres.

A spool segment is UTF-8 text: a header line, then one JSON array per row. Decimals travel as
strings and times as integer microseconds since the epoch, so a row read back is the row
that was written, digit for digit. No I/O here.
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from scheduler.errors import SchedulerError
from scheduler.timeconv import us_to_datetime

HEADER = {"format": "scheduler-usage-spool", "version": 1}


class SpoolFormatError(SchedulerError):
    """A spool segment is not in the expected format."""


@dataclass(frozen=True)
class UsageRow:
    """One sampled usage period (never a closing row), as insert_usage_periods takes it."""

    job_id: int
    seq: int
    attempt: int
    tenant: str
    node: str
    start_us: int
    end_us: int
    cpu_seconds: Decimal
    memory_byte_seconds: Decimal
    memory_peak_bytes: int
    io_read_bytes: int
    io_write_bytes: int


def encode(rows: list[UsageRow]) -> bytes:
    """A segment holding ``rows``."""
    lines = [json.dumps(HEADER, sort_keys=True)]
    for row in rows:
        values = [str(v) if isinstance(v, Decimal) else v for v in astuple(row)]
        lines.append(json.dumps(values, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise SpoolFormatError(f"spool row: {what} must be an integer, got {value!r}")
    return value


def _decimal(value: object, what: str) -> Decimal:
    if not isinstance(value, str):
        raise SpoolFormatError(f"spool row: {what} must be a decimal string, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise SpoolFormatError(f"spool row: {what} is not a decimal: {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise SpoolFormatError(f"spool row: {what} must be finite and >= 0, got {value!r}")
    return number


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpoolFormatError(f"spool row: {what} must be a non-empty string, got {value!r}")
    return value


def decode(data: bytes) -> list[UsageRow]:
    """The rows of a segment; SpoolFormatError on anything else (a torn or foreign file)."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise SpoolFormatError(f"spool segment is not UTF-8: {exc}") from exc
    if not text.endswith("\n"):
        raise SpoolFormatError("spool segment does not end with a newline (torn write?)")
    lines = text[:-1].split("\n")
    try:
        header = json.loads(lines[0])
        values = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as exc:
        raise SpoolFormatError(f"spool segment is not JSON lines: {exc}") from exc
    if header != HEADER:
        raise SpoolFormatError(f"spool segment header is {header!r}, expected {HEADER!r}")
    rows = []
    for v in values:
        if not isinstance(v, list) or len(v) != 12:
            raise SpoolFormatError(f"spool row must be an array of 12 values, got {v!r}")
        row = UsageRow(
            job_id=_int(v[0], "job_id"),
            seq=_int(v[1], "seq"),
            attempt=_int(v[2], "attempt"),
            tenant=_text(v[3], "tenant"),
            node=_text(v[4], "node"),
            start_us=_int(v[5], "start_us"),
            end_us=_int(v[6], "end_us"),
            cpu_seconds=_decimal(v[7], "cpu_seconds"),
            memory_byte_seconds=_decimal(v[8], "memory_byte_seconds"),
            memory_peak_bytes=_int(v[9], "memory_peak_bytes"),
            io_read_bytes=_int(v[10], "io_read_bytes"),
            io_write_bytes=_int(v[11], "io_write_bytes"),
        )
        if row.seq < 1 or row.attempt < 1 or row.end_us < row.start_us:
            raise SpoolFormatError(f"spool row {v!r}: seq and attempt >= 1, end >= start")
        rows.append(row)
    return rows


def timestamp(us: int) -> datetime:
    """A timestamptz value from microseconds since the epoch."""
    return us_to_datetime(us)


def columns(rows: list[UsageRow]) -> list[list[object]]:
    """The twelve arrays insert_usage_periods unnests."""
    out: list[list[object]] = [[] for _ in range(12)]
    for row in rows:
        values = astuple(row)
        for i, value in enumerate(values):
            out[i].append(timestamp(value) if i in (5, 6) else value)
    return out
