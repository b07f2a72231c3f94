"""Routes under /v1/tenants: list, create, freeze and thaw."""

from __future__ import annotations

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scheduler.api.auth import Principal, bearer
from scheduler.api.bodies import TENANT_FIELDS, parse_json, validate
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.api.reading import read_body
from scheduler.db.pool import Conn
from scheduler.errors import ControlRefused, TenantNotFound
from scheduler.presentation import record_to_dict
from scheduler.repos import tenants as repo
from scheduler.requests import TENANT_NAME


async def act_as(conn: Conn, who: Principal) -> None:
    """Tell the database, for this transaction, that a tenant token makes the request: it
    then treats the request as the tenant's (operator holds, a child's limits), not the
    operator's, although the API's session is the agent's (migrations/0010)."""
    if not who.is_admin:
        await repo.act_as(conn, who.name)


async def list_tenants(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        rows = await repo.list_tenants(conn, job_counts=False)
    return JSONResponse({"items": [record_to_dict(r) for r in rows if who.sees(r["name"])]})


async def create_tenant(request: Request) -> Response:
    bearer(request.headers.get("authorization"))  # no header: 401 before reading anything
    # The body is read and checked before a database connection is taken (reading.py).
    values = validate(parse_json(await read_body(request)), TENANT_FIELDS, ("name",))
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        parent = values.get("parent")
        # Admins create anywhere; a tenant may create children inside its own subtree.
        if not who.is_admin and (parent is None or not who.sees(parent)):
            raise Problem(
                403,
                "a tenant token may only create child tenants of its own subtree"
                " (set parent to your tenant)",
            )
        settings = {k: v for k, v in values.items() if k != "name"}
        try:
            async with conn.transaction():
                # The database checks a tenant's child against its parent (weight, limits).
                await act_as(conn, who)
                row = await repo.add_tenant(conn, values["name"], **settings)
        except ControlRefused as exc:
            answer = _create_problem(exc, values["name"], parent)
            if answer is None:
                raise  # a refusal the API has no answer for: a 500, logged with its cause
            raise answer from exc
    return JSONResponse(
        record_to_dict(row),
        status_code=201,
        headers={"Location": f"/v1/tenants/{row['name']}"},
    )


def _create_problem(exc: ControlRefused, name: str, parent: str | None) -> Problem | None:
    """The answer to a refused create, by the database's error under the refusal (None: no
    answer but a 500, as for any other database error)."""
    cause = exc.__cause__
    if isinstance(cause, asyncpg.UniqueViolationError):
        return Problem(409, f"tenant {name!r} already exists")
    if isinstance(cause, asyncpg.ForeignKeyViolationError):
        return Problem(422, f"parent tenant {parent!r} does not exist", field="parent")
    if isinstance(cause, asyncpg.CheckViolationError):
        return Problem(422, str(cause))
    if cause is None:
        return Problem(422, str(exc))
    return None


async def _set_frozen(request: Request, frozen: bool) -> Response:
    name = request.path_params["name"]
    if not TENANT_NAME.match(name):
        raise Problem(404, f"no tenant named {name!r}")
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        if not who.sees(name):
            raise Problem(404, f"no tenant named {name!r}")
        try:
            async with conn.transaction():
                # A tenant's thaw of an operator hold is refused by the database.
                await act_as(conn, who)
                row = await repo.set_tenant_frozen(conn, name, frozen)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise Problem(403, str(exc)) from exc
        except TenantNotFound as exc:
            raise Problem(404, f"no tenant named {name!r}") from exc
    return JSONResponse(record_to_dict(row))


async def freeze_tenant(request: Request) -> Response:
    return await _set_frozen(request, True)


async def thaw_tenant(request: Request) -> Response:
    return await _set_frozen(request, False)
