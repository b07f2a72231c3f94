"""GET /v1/billing/export: the same priced export as `scheduler billing export`;
GET /v1/billing/statements: the closed statements (`scheduler billing close`)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from scheduler.accounting import billing, statements
from scheduler.accounting.export import instant as billing_instant
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.errors import SchedulerError
from scheduler.repos import status as repo
from scheduler.requests import TENANT_NAME

MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "focus": "text/csv; charset=utf-8",
    "json": "application/json",
}


def _instant(name: str, text: str | None) -> datetime:
    if text is None:
        raise Problem(400, f"{name} is required: a UTC date or time, e.g. 2026-11-01")
    try:
        return billing.parse_instant(text)
    except argparse.ArgumentTypeError as exc:
        raise Problem(400, f"{name}: {exc}") from exc


async def export(request: Request) -> Response:
    params = request.query_params
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        start = _instant("from", params.get("from"))
        end = _instant("to", params.get("to"))
        fmt = params.get("format", "csv")
        if fmt not in MEDIA:
            raise Problem(400, f"format must be one of csv, json, focus: got {fmt!r}")
        tenant = params.get("tenant")
        if tenant is None and not who.is_admin:
            tenant = who.name  # a tenant's token exports its own bill
        if tenant is not None and (not TENANT_NAME.match(tenant) or not who.sees(tenant)):
            raise Problem(404, f"no tenant named {tenant!r}")
        try:
            text, _ = await billing.export_counted(
                conn,
                start=start,
                end=end,
                fmt=fmt,
                tenant=tenant,
                group_by=params.get("group_by"),
            )
        except billing.UnknownTenant as exc:
            raise Problem(404, str(exc)) from exc
        except SchedulerError as exc:
            raise Problem(422, str(exc)) from exc
    return Response(text, media_type=MEDIA[fmt])


async def list_statements(request: Request) -> Response:
    """The closed statements this caller may see (a tenant's token: its own subtree's), each
    with its exact body, whose SHA-256 is its ``sha256``."""
    params = request.query_params
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        period = params.get("period")
        try:
            month = None if period is None else statements.parse_month(period)
        except statements.CloseRefused as exc:
            raise Problem(400, f"period: {exc}") from exc
        tenant = params.get("tenant")
        if tenant is not None and (not TENANT_NAME.match(tenant) or not who.sees(tenant)):
            raise Problem(404, f"no tenant named {tenant!r}")
        rows = await repo.closed_statements(conn, month, tenant)
    found = [
        {
            "period": statements.month_name(r["period"]),
            "tenant": r["tenant"],
            "sha256": r["sha256"],
            "totals": json.loads(r["totals"]),
            "lines": r["lines"],
            "usage_rows": r["usage_rows"],
            "late_rows": r["late_rows"],
            "closed_at": billing_instant(r["closed_at"]),
            "body": r["body"],
        }
        for r in rows
        if who.sees(r["tenant"])
    ]
    return Response(
        json.dumps({"statements": found}, indent=2, sort_keys=True) + "\n",
        media_type="application/json",
    )
