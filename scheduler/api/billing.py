"""GET /v1/billing/export: the same priced export as `scheduler billing export`."""

from __future__ import annotations

import argparse
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from scheduler.accounting import billing
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.errors import SchedulerError
from scheduler.store import TENANT_NAME

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
            text = await billing.export(conn, start=start, end=end, fmt=fmt, tenant=tenant)
        except billing.UnknownTenant as exc:
            raise Problem(404, str(exc)) from exc
        except SchedulerError as exc:
            raise Problem(422, str(exc)) from exc
    return Response(text, media_type=MEDIA[fmt])
