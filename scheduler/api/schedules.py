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

from scheduler import schedules
from scheduler.api.auth import Principal
from scheduler.api.bodies import JOB_FIELDS, FieldError, parse_json, validate
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.cron import MAX_CRON_LENGTH, MAX_TIMEZONE_LENGTH
from scheduler.errors import ScheduleExists, ScheduleNotFound, ScheduleRefused
from scheduler.presentation import record_to_dict
from scheduler.requests import TENANT_NAME

# A template holds the job's own fields: the tenant is the schedule's, the due time its run_at.
# Not depends_on: a fixed job id in a recurring template is met once and then forever.
TEMPLATE_FIELDS = {
    k: v for k, v in JOB_FIELDS.items() if k not in ("tenant", "run_at", "depends_on")
}


def _string(max_len: int) -> Any:
    def check(v: Any) -> str:
        if not isinstance(v, str) or len(v) > max_len or "\0" in v:
            raise FieldError(f"expected a string of at most {max_len} characters")
        return v

    return check


def _overlap(v: Any) -> str:
    if v not in schedules.OVERLAPS:
        raise FieldError("expected skip or queue")
    return str(v)


def _name(v: Any) -> str:
    if not isinstance(v, str) or not schedules.SCHEDULE_NAME.match(v):
        raise FieldError("expected a schedule name: [a-z0-9][a-z0-9_.-]{0,62}")
    return v


def _enabled(v: Any) -> bool:
    if not isinstance(v, bool):
        raise FieldError("expected true or false")
    return v


def _template(v: Any) -> dict[str, Any]:
    try:
        return validate(v, TEMPLATE_FIELDS, ("argv",))
    except Problem as exc:
        # One field of the template: report it as job.<field>.
        errors = exc.extra.get("errors") or [{"field": "", "message": exc.detail}]
        first = errors[0]
        raise FieldError(
            f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        ) from exc


SCHEDULE_FIELDS = {
    "name": _name,
    "tenant": JOB_FIELDS["tenant"],
    "cron": _string(MAX_CRON_LENGTH),
    "timezone": _string(MAX_TIMEZONE_LENGTH),
    "overlap": _overlap,
    "enabled": _enabled,
    "job": _template,
}


def schedule_json(row: asyncpg.Record) -> dict[str, Any]:
    return record_to_dict(row)


def _location(row: asyncpg.Record) -> str:
    return f"/v1/schedules/{row['name']}?tenant={row['tenant']}"


def _tenant_of(request: Request, who: Principal) -> str:
    return request.query_params.get("tenant") or ("default" if who.is_admin else who.name)


async def _visible(request: Request, conn: Any) -> asyncpg.Record:
    """The schedule of the path, or 404 when it does not exist or is not the caller's."""
    who = await caller(request, conn)
    name, tenant = request.path_params["name"], _tenant_of(request, who)
    missing = Problem(404, f"tenant {tenant!r} has no schedule named {name!r}")
    if not TENANT_NAME.match(tenant) or not who.sees(tenant):
        raise missing
    try:
        return await schedules.get(conn, tenant, name)
    except ScheduleNotFound as exc:
        raise missing from exc


async def create_schedule(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        values = validate(
            parse_json(await request.body()), SCHEDULE_FIELDS, ("name", "cron", "job")
        )
        values.setdefault("tenant", "default" if who.is_admin else who.name)
        if not who.sees(values["tenant"]):
            raise Problem(
                403, f"this token may not create schedules for tenant {values['tenant']!r}"
            )
        try:
            row = await schedules.add(conn, schedules.ScheduleRequest(**values))
        except ScheduleExists as exc:
            raise Problem(409, str(exc), field="name") from exc
        except ScheduleRefused as exc:
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
        except ScheduleNotFound as exc:
            raise Problem(404, str(exc)) from exc
    return Response(status_code=204)


async def _set_enabled(request: Request, enabled: bool) -> Response:
    async with deps(request).pool.acquire() as conn:
        row = await _visible(request, conn)
        try:
            row = await schedules.set_enabled(conn, row["tenant"], row["name"], enabled)
        except ScheduleNotFound as exc:
            raise Problem(404, str(exc)) from exc
        except ScheduleRefused as exc:
            raise Problem(409, str(exc), field=exc.field) from exc
    return JSONResponse(schedule_json(row))


async def pause_schedule(request: Request) -> Response:
    return await _set_enabled(request, False)


async def resume_schedule(request: Request) -> Response:
    return await _set_enabled(request, True)
