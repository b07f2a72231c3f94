"""Prices: which rate applies to a quantity, and what it costs. Pure; exact decimals.

A rate prices one resource (``cpu_second``, ``memory_gib_hour``, ``io_gib``: what a job used;
``cpu_core_second_reserved``, ``memory_gib_hour_reserved``: what it reserved, its requested
cores and memory times wall time, as clouds bill instances) for one tenant or for all
(tenant NULL), in one currency, over a validity interval [valid_from, valid_to).
For a usage row, the rate is the one valid when the row's period ends; a tenant's own rate
beats the default; among equals the latest ``valid_from`` wins, then the highest id, so that
overlapping rows still resolve the same way every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Literal

from scheduler.errors import SchedulerError

Resource = Literal[
    "cpu_second",
    "memory_gib_hour",
    "io_gib",
    "cpu_core_second_reserved",
    "memory_gib_hour_reserved",
]
RESOURCES: tuple[Resource, ...] = (
    "cpu_second",
    "memory_gib_hour",
    "io_gib",
    "cpu_core_second_reserved",
    "memory_gib_hour_reserved",
)
# Priced only where a rate for them exists (request-based billing is the operator's choice);
# the usage resources need a rate wherever they were used.
RESERVED: frozenset[str] = frozenset({"cpu_core_second_reserved", "memory_gib_hour_reserved"})
GIB = 1024**3
SECONDS_PER_HOUR = 3600
# Costs are rounded once, per line, half to even, to this many decimal places (far below a
# cent of any currency, so a sum of lines is what an invoice would round).
MONEY_PLACES = Decimal("1e-10")
# Pricing quantities in GiB-hours / GiB are rounded for display only; costs use exact values.
QUANTITY_PLACES = Decimal("1e-18")


class MissingRate(SchedulerError):
    """No rate applies to some usage."""

    def __init__(self, resource: str, tenant: str, at: datetime) -> None:
        super().__init__(
            f"no rate for {resource} of tenant {tenant!r} at {at.isoformat()}: add one, e.g. "
            f"INSERT INTO scheduler.rates (resource, price, currency) "
            f"VALUES ('{resource}', 0.00001, 'USD')"
        )
        self.resource = resource
        self.tenant = tenant
        self.at = at


@dataclass(frozen=True)
class Rate:
    """One row of scheduler.rates (None bounds are -infinity / infinity)."""

    id: int
    resource: str
    tenant: str | None
    price: Decimal
    currency: str
    valid_from: datetime | None
    valid_to: datetime | None

    def valid_at(self, at: datetime) -> bool:
        """True if ``at`` lies in [valid_from, valid_to)."""
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_to is None or at < self.valid_to
        )


def resolve(rates: list[Rate], resource: str, tenant: str, at: datetime) -> Rate:
    """The rate for ``resource`` used by ``tenant`` at ``at``; MissingRate if none."""
    best = find(rates, resource, tenant, at)
    if best is None:
        raise MissingRate(resource, tenant, at)
    return best


def find(rates: list[Rate], resource: str, tenant: str, at: datetime) -> Rate | None:
    """The rate for ``resource`` used by ``tenant`` at ``at``, or None."""
    best: Rate | None = None
    best_key: tuple[int, datetime | None, int] | None = None
    for rate in rates:
        if rate.resource != resource or not rate.valid_at(at):
            continue
        if rate.tenant is not None and rate.tenant != tenant:
            continue
        key = (1 if rate.tenant is not None else 0, rate.valid_from, rate.id)
        if best_key is None or _later(key, best_key):
            best, best_key = rate, key
    return best


def _later(a: tuple[int, datetime | None, int], b: tuple[int, datetime | None, int]) -> bool:
    """Order (specific, valid_from, id), with a None valid_from (-infinity) lowest."""
    if a[0] != b[0]:
        return a[0] > b[0]
    if a[1] != b[1]:
        if a[1] is None:
            return False
        if b[1] is None:
            return True
        return a[1] > b[1]
    return a[2] > b[2]


def pricing_quantity(resource: str, base: Decimal) -> Decimal:
    """The exact quantity in the rate's unit from a base quantity.

    cpu_second: cpu seconds; memory_gib_hour: byte-seconds; io_gib: bytes;
    cpu_core_second_reserved: core-seconds; memory_gib_hour_reserved: byte-seconds. The result
    may need more digits than the default context (1/3600 does not terminate): 60 are used.
    """
    with localcontext() as ctx:
        ctx.prec = 60
        if resource in ("cpu_second", "cpu_core_second_reserved"):
            return base
        if resource in ("memory_gib_hour", "memory_gib_hour_reserved"):
            return base / (GIB * SECONDS_PER_HOUR)
        if resource == "io_gib":
            return base / GIB
    raise ValueError(f"unknown resource {resource!r}")


def cost(quantity: Decimal, price: Decimal) -> Decimal:
    """``quantity * price`` rounded half-even to MONEY_PLACES (computed with 60 digits)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (quantity * price).quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)


def display_quantity(quantity: Decimal) -> Decimal:
    """A pricing quantity rounded for output (costs are computed before this rounding)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return quantity.quantize(QUANTITY_PLACES, rounding=ROUND_HALF_EVEN)
