"""Parsing of human quantities (sizes, durations, cores) given on the command line."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal, InvalidOperation


class UnitError(argparse.ArgumentTypeError, ValueError):
    """A quantity could not be parsed; argparse shows this message as is."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
# 1h30m, 2d12h, 1m30s: whole-unit parts from the largest unit down, as systemd and Go write.
_COMPOUND = re.compile(r"^\s*((?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+)\s*$", re.IGNORECASE)
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_SECONDS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}


def parse_size(text: str) -> int:
    """Bytes from '268435456', '256M', '256MiB', '1.5G' (binary multiples, as the kernel uses)."""
    match = _SIZE.match(text)
    if not match:
        raise UnitError(
            f"{text!r} is not a size: use bytes or a number with K, M, G, T (e.g. 256M)"
        )
    number, unit = Decimal(match.group(1)), match.group(2).lower()
    value = number * (1024 ** _POWERS[unit])
    if value != value.to_integral_value():
        raise UnitError(f"{text!r} is not a whole number of bytes")
    return int(value)


def parse_duration(text: str) -> Decimal:
    """Seconds from '30', '30s', '1.5m', '2h', '250ms', '1h30m'."""
    match = _DURATION.match(text)
    if match:
        return Decimal(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]
    compound = _COMPOUND.match(text)
    if compound:
        parts = [(Decimal(n), u.lower()) for n, u in _PART.findall(compound.group(1))]
        order = [_SECONDS[u] for _, u in parts]
        if order == sorted(order, reverse=True) and len(set(order)) == len(order):
            return sum((n * _SECONDS[u] for n, u in parts), Decimal(0))
    raise UnitError(
        f"{text!r} is not a duration: use seconds or a number with ms, s, m, h, d "
        "(e.g. 30s, 5m, 1h30m)"
    )


def parse_cores(text: str) -> Decimal:
    """CPU cores as an exact decimal, e.g. '0.5' or '2'."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise UnitError(f"{text!r} is not a number of cores (e.g. 0.5 or 2)") from exc
    if not value.is_finite() or value <= 0:
        raise UnitError(f"cpu must be a positive number of cores: got {text!r}")
    return value


def format_bytes(value: int | None) -> str:
    """'256MiB'-style rendering for tables."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{value}B"
