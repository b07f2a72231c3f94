"""Rates resolution, exact pricing and byte-identical export formats (pure)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from scheduler.accounting.export import FOCUS_COLUMNS, UsageRow, price, render
from scheduler.accounting.rates import MissingRate, Rate, cost, pricing_quantity, resolve

T0 = datetime(2026, 11, 1, tzinfo=UTC)
GIB = 1024**3


def rate(
    id: int,
    resource: str = "cpu_second",
    tenant: str | None = None,
    price: str = "1",
    currency: str = "USD",
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
) -> Rate:
    return Rate(id, resource, tenant, Decimal(price), currency, valid_from, valid_to)


def test_a_tenant_rate_beats_the_default() -> None:
    rates = [rate(1, price="0.5"), rate(2, tenant="acme", price="0.4"), rate(3, tenant="other")]
    assert resolve(rates, "cpu_second", "acme", T0).id == 2
    assert resolve(rates, "cpu_second", "zeta", T0).id == 1


def test_validity_is_half_open_and_the_latest_start_wins() -> None:
    rates = [
        rate(1, valid_to=T0),
        rate(2, valid_from=T0, valid_to=T0 + timedelta(days=1)),
        rate(3, valid_from=T0 + timedelta(hours=12)),
        rate(4, valid_from=T0),  # overlaps 2 with the same start: the higher id wins
    ]
    assert resolve(rates, "cpu_second", "a", T0 - timedelta(microseconds=1)).id == 1
    assert resolve(rates, "cpu_second", "a", T0).id == 4
    assert resolve(rates, "cpu_second", "a", T0 + timedelta(hours=13)).id == 3


def test_a_tenant_rate_out_of_validity_falls_back_to_the_default() -> None:
    rates = [rate(1), rate(2, tenant="acme", valid_from=T0 + timedelta(days=1))]
    assert resolve(rates, "cpu_second", "acme", T0).id == 1


def test_no_rate_is_an_error_that_says_how_to_add_one() -> None:
    with pytest.raises(MissingRate, match=r"no rate for io_gib of tenant 'acme'.*INSERT INTO"):
        resolve([rate(1)], "io_gib", "acme", T0)


def test_quantities_and_costs_are_exact_decimals() -> None:
    assert pricing_quantity("memory_gib_hour", Decimal(GIB * 3600)) == 1
    assert pricing_quantity("io_gib", Decimal(GIB // 2)) == Decimal("0.5")
    assert pricing_quantity("cpu_second", Decimal("0.000000001")) == Decimal("1E-9")
    # 1/3 GiB-hour at 0.03: rounded once, half to even, at 10 places.
    third = pricing_quantity("memory_gib_hour", Decimal(GIB * 1200))
    assert cost(third, Decimal("0.03")) == Decimal("0.0100000000")
    assert cost(Decimal("0.00000000005"), Decimal(1)) == Decimal("0E-10")
    assert cost(Decimal("0.00000000015"), Decimal(1)) == Decimal("2E-10")


def rows() -> list[UsageRow]:
    def row(job: int, tenant: str, minute: int, cpu: str, mem: int, r: int, w: int) -> UsageRow:
        return UsageRow(
            job, f"n{job}", tenant, T0 + timedelta(minutes=minute), Decimal(cpu), Decimal(mem), r, w
        )

    return [
        row(2, "acme", 70, "0.5", 0, 0, 0),
        row(1, "acme", 5, "1.000000001", GIB * 1800, GIB, 0),
        row(1, "acme", 10, "2", GIB * 1800, 0, GIB),
        row(3, "zeta", 59, "0.25", 0, 0, 0),
    ]


def rates_for_test() -> list[Rate]:
    return [
        rate(1, "cpu_second", price="0.0001"),
        rate(2, "cpu_second", tenant="acme", price="0.00005", currency="EUR"),
        rate(3, "memory_gib_hour", price="0.01"),
        rate(4, "io_gib", price="0.1"),
    ]


def test_lines_group_by_hour_job_resource_and_rate() -> None:
    lines = price(rows(), rates_for_test(), start=T0, end=T0 + timedelta(hours=2))
    summary = [
        (ln.start.hour, ln.job_id, ln.resource, str(ln.consumed), str(ln.cost)) for ln in lines
    ]
    assert summary == [
        (0, 1, "cpu_second", "3.000000001", "0.0001500000"),
        (0, 1, "memory_gib_hour", str(GIB * 3600), "0.0100000000"),
        (0, 1, "io_gib", str(2 * GIB), "0.2000000000"),
        (0, 3, "cpu_second", "0.25", "0.0000250000"),
        (1, 2, "cpu_second", "0.5", "0.0000250000"),
    ]
    assert lines[0].rate.currency == "EUR"


def test_charge_periods_are_clipped_to_the_billing_period() -> None:
    start = T0 + timedelta(minutes=30)
    lines = price(rows()[:1], rates_for_test(), start=start, end=T0 + timedelta(minutes=80))
    assert (lines[0].start, lines[0].end) == (T0 + timedelta(hours=1), T0 + timedelta(minutes=80))


@pytest.mark.parametrize("fmt", ["csv", "json", "focus"])
def test_renders_are_byte_identical_and_order_free(fmt: str) -> None:
    window = {"start": T0, "end": T0 + timedelta(hours=2)}
    a = render(price(rows(), rates_for_test(), **window), fmt, **window)  # type: ignore[arg-type]
    b = render(price(rows()[::-1], rates_for_test(), **window), fmt, **window)  # type: ignore[arg-type]
    assert a == b
    assert not re.search(r"\d[eE][-+]?\d", a)  # fixed-point numbers only


def test_focus_has_the_focus_columns_and_values() -> None:
    window = {"start": T0, "end": T0 + timedelta(hours=2)}
    text = render(price(rows(), rates_for_test(), **window), "focus", **window)  # type: ignore[arg-type]
    records = list(csv.DictReader(io.StringIO(text)))
    assert tuple(records[0]) == FOCUS_COLUMNS
    for column in (
        "BilledCost",
        "EffectiveCost",
        "ListCost",
        "ChargePeriodStart",
        "ChargePeriodEnd",
        "ChargeCategory",
        "ConsumedQuantity",
        "ConsumedUnit",
        "PricingQuantity",
        "PricingUnit",
        "ResourceId",
        "SubAccountId",
        "BillingCurrency",
    ):
        assert column in FOCUS_COLUMNS
    assert list(FOCUS_COLUMNS) == sorted(FOCUS_COLUMNS)  # the specification's order
    assert all(len(r) == len(FOCUS_COLUMNS) for r in records)
    first = records[0]
    assert first["ResourceId"] == "1" and first["SubAccountId"] == "acme"
    assert first["CommitmentDiscountId"] == "" and first["SkuMeter"] == "CPU"
    assert first["ChargePeriodStart"] == "2026-11-01T00:00:00Z"
    assert first["ChargePeriodEnd"] == "2026-11-01T01:00:00Z"
    assert first["BillingPeriodEnd"] == "2026-11-01T02:00:00Z"
    assert first["BilledCost"] == first["EffectiveCost"] == first["ListCost"] == "0.0001500000"
    assert first["ChargeCategory"] == "Usage"
    memory = records[1]
    assert (memory["ConsumedUnit"], memory["PricingUnit"]) == ("Byte-Seconds", "GiB-Hours")
    assert memory["PricingQuantity"] == "1.000000000000000000"


def test_json_totals_per_currency() -> None:
    window = {"start": T0, "end": T0 + timedelta(hours=2)}
    doc = json.loads(render(price(rows(), rates_for_test(), **window), "json", **window))  # type: ignore[arg-type]
    assert doc["totals"] == {"EUR": "0.0001750000", "USD": "0.2100250000"}
    assert doc["billing_period_start"] == "2026-11-01T00:00:00Z"
    assert len(doc["lines"]) == 5
