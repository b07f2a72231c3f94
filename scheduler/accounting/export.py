"""Billing export: usage rows and rates in, priced lines out as CSV, JSON or FOCUS. Pure.

Lines are per tenant, job, resource, rate and UTC hour (of the rows' period ends), clipped to
the billing period. Usage lines price what the job used (cpu and io exactly as the kernel
counted them; memory per period at no less than its peak, see accounting/periods.py);
reservation lines, where a rate for them exists, what it reserved (requested cores and memory
times the rows' wall time). Quantities are summed exactly before they are priced, costs are rounded
once per line (see rates.MONEY_PLACES), and every output is sorted and formatted the same
way every time: the same export run twice is byte-identical.

Every line carries its job's labels (FOCUS Tags, the CSV/JSON ``labels`` column), and
:func:`group_by_label` sums the lines by one label's value. A row that arrived late for a
closed month (see accounting/statements.py) is billed at the first instant of the month that
bills it, on its own line with a note naming the month it belongs to and its job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from scheduler.accounting.rates import (
    RESERVED,
    RESOURCES,
    Rate,
    cost,
    display_quantity,
    find,
    pricing_quantity,
    resolve,
)

Format = Literal["csv", "json", "focus"]
FORMATS: tuple[Format, ...] = ("csv", "json", "focus")
HOUR = timedelta(hours=1)
RESOURCE_ORDER: dict[str, int] = {name: i for i, name in enumerate(RESOURCES)}
CONSUMED_UNITS = {
    "cpu_second": "CPU-Seconds",
    "memory_gib_hour": "Byte-Seconds",
    "io_gib": "Bytes",
    "cpu_core_second_reserved": "Core-Seconds",
    "memory_gib_hour_reserved": "Byte-Seconds",
}
PRICING_UNITS = {
    "cpu_second": "CPU-Seconds",
    "memory_gib_hour": "GiB-Hours",
    "io_gib": "GiB",
    "cpu_core_second_reserved": "Core-Seconds",
    "memory_gib_hour_reserved": "GiB-Hours",
}
# What each line measures, and how exactly (the FOCUS ChargeDescription).
DESCRIPTIONS = {
    "cpu_second": "CPU time used by the job, exactly as the kernel counted it",
    "memory_gib_hour": (
        "Memory held by the job over time: each sampling period billed at the larger of its "
        "peak (the kernel's high-water mark, reset every period) times its length and the "
        "average of its end samples times its length (an estimate bounded below by the peak)"
    ),
    "io_gib": (
        "Block I/O read and written by the job, exactly as the kernel counted it, plus the "
        "bytes of stdout and stderr kept"
    ),
    "cpu_core_second_reserved": "CPU cores the job requested, times its wall time",
    "memory_gib_hour_reserved": "Memory the job requested, times its wall time",
}


@dataclass(frozen=True)
class UsageRow:
    """The part of a scheduler.usage row (joined with its job) that the export prices."""

    job_id: int
    job_name: str
    tenant: str
    period_end: datetime
    cpu_seconds: Decimal
    memory_byte_seconds: Decimal
    io_read_bytes: int
    io_write_bytes: int
    # What the job reserved (its requested cores and memory) and the row's wall time, for the
    # reservation resources.
    cpu_reserved: Decimal = Decimal(0)
    memory_reserved_bytes: int = 0
    wall_seconds: Decimal = Decimal(0)
    # The job's labels as jsonb prints them (a JSON object).
    labels: str = "{}"
    seq: int = 0
    # Late usage: the first instant of the (later) month that bills the row, else None.
    billed_at: datetime | None = None

    def note(self) -> str:
        """What a late row's line says ('' for a row billed in its own month)."""
        if self.billed_at is None:
            return ""
        return f"late usage from {self.period_end.astimezone(UTC):%Y-%m}, job {self.job_id}"

    def base_quantity(self, resource: str) -> Decimal:
        """The row's quantity of ``resource`` in base units (seconds, byte-seconds, bytes)."""
        if resource == "cpu_second":
            return self.cpu_seconds
        if resource == "memory_gib_hour":
            return self.memory_byte_seconds
        if resource == "cpu_core_second_reserved":
            return self.cpu_reserved * self.wall_seconds
        if resource == "memory_gib_hour_reserved":
            return self.memory_reserved_bytes * self.wall_seconds
        return Decimal(self.io_read_bytes + self.io_write_bytes)


@dataclass(frozen=True)
class Line:
    """One priced charge."""

    start: datetime
    end: datetime
    tenant: str
    job_id: int
    job_name: str
    resource: str
    consumed: Decimal  # base units, exact
    quantity: Decimal  # pricing units, exact
    rate: Rate
    cost: Decimal
    labels: str = "{}"
    note: str = ""

    def sort_key(self) -> tuple[datetime, str, int, int, int, str]:
        return (
            self.start,
            self.tenant,
            self.job_id,
            RESOURCE_ORDER[self.resource],
            self.rate.id,
            self.note,
        )


def _hour(at: datetime) -> datetime:
    utc = at.astimezone(UTC)
    return utc.replace(minute=0, second=0, microsecond=0)


def price(
    rows: Iterable[UsageRow], rates: list[Rate], *, start: datetime, end: datetime
) -> list[Line]:
    """Priced lines for ``rows`` (already limited to period ends in [start, end))."""
    sums: dict[tuple[datetime, str, int, str, int, str], Decimal] = {}
    names: dict[int, str] = {}
    labels: dict[int, str] = {}
    by_id: dict[int, Rate] = {}
    for row in rows:
        names[row.job_id] = row.job_name
        labels[row.job_id] = row.labels
        # A late row is billed in the month that bills it, priced at the rate of its use.
        hour = _hour(row.billed_at or row.period_end)
        note = row.note()
        for resource in RESOURCES:
            base = row.base_quantity(resource)
            if not base:
                continue  # nothing used, nothing to price (and no rate needed)
            if resource in RESERVED:
                found = find(rates, resource, row.tenant, row.period_end)
                if found is None:
                    continue  # reservations are billed only where a rate says so
                rate = found
            else:
                rate = resolve(rates, resource, row.tenant, row.period_end)
            by_id[rate.id] = rate
            key = (hour, row.tenant, row.job_id, resource, rate.id, note)
            sums[key] = sums.get(key, Decimal(0)) + base
    lines = []
    for (hour, tenant, job_id, resource_name, rate_id, note), base in sums.items():
        rate = by_id[rate_id]
        quantity = pricing_quantity(resource_name, base)
        lines.append(
            Line(
                start=max(hour, start.astimezone(UTC)),
                end=min(hour + HOUR, end.astimezone(UTC)),
                tenant=tenant,
                job_id=job_id,
                job_name=names[job_id],
                resource=resource_name,
                consumed=base,
                quantity=quantity,
                rate=rate,
                cost=cost(quantity, rate.price),
                labels=labels[job_id],
                note=note,
            )
        )
    return sorted(lines, key=Line.sort_key)


def instant(at: datetime) -> str:
    """UTC ISO 8601 with a Z (microseconds only when present)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def number(value: Decimal) -> str:
    """Fixed-point text of an exact decimal: never an exponent."""
    return format(value, "f")


CSV_COLUMNS = (
    "charge_period_start",
    "charge_period_end",
    "tenant",
    "job_id",
    "job_name",
    "resource",
    "consumed_quantity",
    "consumed_unit",
    "pricing_quantity",
    "pricing_unit",
    "unit_price",
    "currency",
    "cost",
    "rate_id",
    "labels",
    "note",
)


def _plain(line: Line) -> dict[str, str]:
    return {
        "charge_period_start": instant(line.start),
        "charge_period_end": instant(line.end),
        "tenant": line.tenant,
        "job_id": str(line.job_id),
        "job_name": line.job_name,
        "resource": line.resource,
        "consumed_quantity": number(line.consumed),
        "consumed_unit": CONSUMED_UNITS[line.resource],
        "pricing_quantity": number(display_quantity(line.quantity)),
        "pricing_unit": PRICING_UNITS[line.resource],
        "unit_price": number(line.rate.price),
        "currency": line.rate.currency,
        "cost": number(line.cost),
        "rate_id": str(line.rate.id),
        "labels": line.labels,
        "note": line.note,
    }


SKU_METERS = {
    "cpu_second": "CPU",
    "memory_gib_hour": "Memory",
    "io_gib": "Block I/O",
    "cpu_core_second_reserved": "CPU Reserved",
    "memory_gib_hour_reserved": "Memory Reserved",
}


def _focus(line: Line, start: datetime, end: datetime, account: str) -> dict[str, str]:
    """One FOCUS 1.2 row; columns that do not apply (commitments, capacity reservations,
    regions) are present and null (empty), as the specification allows."""
    money = number(line.cost)
    price_text = number(line.rate.price)
    return {
        "AvailabilityZone": "",
        "BilledCost": money,
        "BillingAccountId": account,
        "BillingAccountName": account,
        "BillingAccountType": "Scheduler",
        "BillingCurrency": line.rate.currency,
        "BillingPeriodEnd": instant(end),
        "BillingPeriodStart": instant(start),
        "CapacityReservationId": "",
        "CapacityReservationStatus": "",
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargeDescription": (
            f"{line.note}: {DESCRIPTIONS[line.resource]}"
            if line.note
            else DESCRIPTIONS[line.resource]
        ),
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": instant(line.end),
        "ChargePeriodStart": instant(line.start),
        "CommitmentDiscountCategory": "",
        "CommitmentDiscountId": "",
        "CommitmentDiscountName": "",
        "CommitmentDiscountQuantity": "",
        "CommitmentDiscountStatus": "",
        "CommitmentDiscountType": "",
        "CommitmentDiscountUnit": "",
        "ConsumedQuantity": number(line.consumed),
        "ConsumedUnit": CONSUMED_UNITS[line.resource],
        "ContractedCost": money,
        "ContractedUnitPrice": price_text,
        "EffectiveCost": money,
        "InvoiceId": "",
        "InvoiceIssuerName": account,
        "ListCost": money,
        "ListUnitPrice": price_text,
        "PricingCategory": "Standard",
        "PricingCurrency": line.rate.currency,
        "PricingCurrencyContractedUnitPrice": price_text,
        "PricingCurrencyEffectiveCost": money,
        "PricingCurrencyListUnitPrice": price_text,
        "PricingQuantity": number(display_quantity(line.quantity)),
        "PricingUnit": PRICING_UNITS[line.resource],
        "ProviderName": account,
        "PublisherName": account,
        "RegionId": "",
        "RegionName": "",
        "ResourceId": str(line.job_id),
        "ResourceName": line.job_name or f"job-{line.job_id}",
        "ResourceType": "Job",
        "ServiceCategory": "Compute",
        "ServiceName": "scheduler",
        "ServiceSubcategory": "Containers",
        "SkuId": line.resource,
        "SkuMeter": SKU_METERS[line.resource],
        "SkuPriceDetails": "",
        "SkuPriceId": str(line.rate.id),
        "SubAccountId": line.tenant,
        "SubAccountName": line.tenant,
        "SubAccountType": "Tenant",
        "Tags": focus_tags(line.labels),
    }


def focus_tags(labels: str) -> str:
    """The job's labels as FOCUS Tags: a JSON object whose values are strings, numbers,
    booleans or null (FOCUS's key-value format). A list or object value becomes its JSON
    text; labels holding none stay byte for byte as the database printed them."""
    found = json.loads(labels)
    if not isinstance(found, dict):
        return "{}"
    if not any(isinstance(v, (dict, list)) for v in found.values()):
        return labels
    flat = {
        k: json.dumps(v, sort_keys=True, separators=(",", ":"))
        if isinstance(v, (dict, list))
        else v
        for k, v in found.items()
    }
    return json.dumps(flat, ensure_ascii=False)


# FOCUS orders its columns alphabetically.
FOCUS_COLUMNS = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
)


# Cells a tenant writes (job names, label values): a spreadsheet opening the CSV would run a
# cell starting with one of these as a formula (CSV injection), so such a cell gets a leading
# apostrophe, as OWASP advises. Labels columns hold a JSON object, which starts with '{'.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TENANT_TEXT = frozenset({"job_name", "ResourceName", "value"})


def cell(text: str) -> str:
    """``text`` safe to open in a spreadsheet."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv(columns: tuple[str, ...], records: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: cell(v) if k in TENANT_TEXT else v for k, v in record.items()} for record in records
    )
    return out.getvalue()


def render(
    lines: list[Line],
    fmt: Format,
    *,
    start: datetime,
    end: datetime,
    tenant: str | None = None,
    account: str = "scheduler",
) -> str:
    """The export text in ``fmt``; identical input gives identical bytes."""
    if fmt == "csv":
        return _csv(CSV_COLUMNS, [_plain(line) for line in lines])
    if fmt == "focus":
        return _csv(FOCUS_COLUMNS, [_focus(line, start, end, account) for line in lines])
    if fmt == "json":
        totals: dict[str, Decimal] = {}
        for line in lines:
            totals[line.rate.currency] = totals.get(line.rate.currency, Decimal(0)) + line.cost
        document: dict[str, Any] = {
            "billing_period_start": instant(start),
            "billing_period_end": instant(end),
            "tenant": tenant,
            "lines": [_plain(line) for line in lines],
            "totals": {currency: number(total) for currency, total in sorted(totals.items())},
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"
    raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")


NO_LABEL = "(none)"


def label_value(labels: str, key: str) -> str | None:
    """The value of label ``key`` as text (a string as is, any other JSON value as JSON),
    or None when the job has no such label."""
    found = json.loads(labels)
    if not isinstance(found, dict) or key not in found:
        return None
    value = found[key]
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


GROUP_COLUMNS = ("label", "value", "labelled", "currency", "cost", "lines", "jobs")


def group_by_label(
    lines: list[Line],
    key: str,
    fmt: Format,
    *,
    start: datetime,
    end: datetime,
    tenant: str | None = None,
) -> str:
    """The lines' costs summed per value of label ``key`` and currency, as csv or json.

    Jobs without the label form one group, ``(none)``, marked ``labelled: false`` (so that a
    label whose value is the text "(none)" stays a group of its own). Groups sum the lines'
    rounded costs exactly, so they add up to the export's totals to the last digit.
    """
    groups: dict[tuple[bool, str, str], tuple[Decimal, int, set[int]]] = {}
    totals: dict[str, Decimal] = {}
    for line in lines:
        value = label_value(line.labels, key)
        group = (value is None, value or "", line.rate.currency)
        money, count, jobs = groups.get(group, (Decimal(0), 0, set()))
        jobs.add(line.job_id)
        groups[group] = (money + line.cost, count + 1, jobs)
        totals[line.rate.currency] = totals.get(line.rate.currency, Decimal(0)) + line.cost
    rows = [
        {
            "label": key,
            "value": NO_LABEL if unlabelled else value,
            "labelled": "false" if unlabelled else "true",
            "currency": currency,
            "cost": number(money),
            "lines": str(count),
            "jobs": str(len(jobs)),
        }
        for (unlabelled, value, currency), (money, count, jobs) in sorted(groups.items())
    ]
    if fmt == "csv":
        return _csv(GROUP_COLUMNS, rows)
    if fmt == "json":
        document: dict[str, Any] = {
            "billing_period_start": instant(start),
            "billing_period_end": instant(end),
            "tenant": tenant,
            "group_by": f"label:{key}",
            "groups": [
                {
                    **row,
                    "value": None if row["labelled"] == "false" else row["value"],
                    "labelled": row["labelled"] == "true",
                    "lines": int(row["lines"]),
                    "jobs": int(row["jobs"]),
                }
                for row in rows
            ],
            "totals": {currency: number(total) for currency, total in sorted(totals.items())},
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"
    raise ValueError(f"--group-by sums csv or json, not {fmt!r}: FOCUS rows carry labels in Tags")
