"""Routes under /v1/schedules: list, create, read, pause, resume and delete.

A schedule is named within its tenant: the routes of one schedule take ``?tenant=`` (default:
the caller's own tenant, ``default`` for the admin). Another tenant's schedule is a 404, as a
job is.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scheduler import jobdefaults, schedules
from scheduler.api.auth import Principal, bearer
from scheduler.api.bodies import parse_json, validate
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.api.reading import read_body
from scheduler.api.schemas import ScheduleCreate
from scheduler.presentation import record_to_dict
from scheduler.requests import TENANT_NAME


def schedule_json(row: asyncpg.Record) -> dict[str, Any]:
    return record_to_dict(row)


def _location(row: asyncpg.Record) -> str:
    return f"/v1/schedules/{row['name']}?tenant={row['tenant']}"


def _tenant_of(request: Request, who: Principal) -> str:
    return request.query_params.get("tenant") or (jobdefaults.TENANT if who.is_admin else who.name)


async def _visible(request: Request, conn: Any) -> asyncpg.Record:
    """The schedule of the path, or 404 when it does not exist or is not the caller's."""
    who = await caller(request, conn)
    name, tenant = request.path_params["name"], _tenant_of(request, who)
    missing = Problem(404, f"tenant {tenant!r} has no schedule named {name!r}")
    if not TENANT_NAME.match(tenant) or not who.sees(tenant):
        raise missing
    try:
        return await schedules.get(conn, tenant, name)
    except schedules.ScheduleNotFound as exc:
        raise missing from exc


async def create_schedule(request: Request) -> Response:
    bearer(request.headers.get("authorization"))  # no header: 401 before reading anything
    # The body is checked before a database connection is taken, as for jobs (reading.py).
    values = validate(parse_json(await read_body(request)), ScheduleCreate)
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        values.setdefault("tenant", jobdefaults.TENANT if who.is_admin else who.name)
        if not who.sees(values["tenant"]):
            raise Problem(
                403, f"this token may not create schedules for tenant {values['tenant']!r}"
            )
        try:
            row = await schedules.add(conn, schedules.ScheduleRequest(**values))
        except schedules.ScheduleExists as exc:
            raise Problem(409, str(exc), field="name") from exc
        except schedules.ScheduleRefused as exc:
            raise Problem(422, str(exc), field=exc.field) from exc
    return JSONResponse(schedule_json(row), status_code=201, headers={"Location": _location(row)})


async def list_schedules(request: Request) -> Response:
    tenant = request.query_params.get("tenant")
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        rows = await schedules.list_schedules(conn, tenant=tenant, within=who.tenants)
    return JSONResponse({"items": [schedule_json(r) for r in rows]})


async def get_schedule(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        return JSONResponse(schedule_json(await _visible(request, conn)))


async def delete_schedule(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        row = await _visible(request, conn)
        try:
            await schedules.remove(conn, row["tenant"], row["name"])
        except schedules.ScheduleNotFound as exc:
            raise Problem(404, str(exc)) from exc
    return Response(status_code=204)


async def _set_enabled(request: Request, enabled: bool) -> Response:
    async with deps(request).pool.acquire() as conn:
        row = await _visible(request, conn)
        try:
            row = await schedules.set_enabled(conn, row["tenant"], row["name"], enabled)
        except schedules.ScheduleNotFound as exc:
            raise Problem(404, str(exc)) from exc
        except schedules.ScheduleRefused as exc:
            raise Problem(409, str(exc), field=exc.field) from exc
    return JSONResponse(schedule_json(row))


async def pause_schedule(request: Request) -> Response:
    return await _set_enabled(request, False)


async def resume_schedule(request: Request) -> Response:
    return await _set_enabled(request, True)
