"""Routes under /v1/tenants: list, create, freeze and thaw."""

from __future__ import annotations

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scheduler import store
from scheduler.api.auth import Principal, bearer
from scheduler.api.bodies import TENANT_FIELDS, parse_json, validate
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.api.reading import read_body
from scheduler.db.pool import Conn
from scheduler.store import TENANT_NAME


async def act_as(conn: Conn, who: Principal) -> None:
    """Tell the database, for this transaction, that a tenant token makes the request: it
    then treats the request as the tenant's (operator holds, a child's limits), not the
    operator's, although the API's session is the agent's (migrations/0010)."""
    if not who.is_admin:
        await conn.execute("SELECT set_config('scheduler.acting_tenant', $1, true)", who.name)


async def list_tenants(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        rows = await conn.fetch("SELECT * FROM scheduler.tenants ORDER BY name")
    return JSONResponse({"items": [store.record_to_dict(r) for r in rows if who.sees(r["name"])]})


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
        columns = list(values)
        try:
            async with conn.transaction():
                # The database checks a tenant's child against its parent (weight, limits).
                await act_as(conn, who)
                row = await conn.fetchrow(
                    f"INSERT INTO scheduler.tenants ({', '.join(columns)})"
                    f" VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})"
                    " RETURNING *",
                    *values.values(),
                )
        except asyncpg.UniqueViolationError as exc:
            raise Problem(409, f"tenant {values['name']!r} already exists") from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise Problem(422, f"parent tenant {parent!r} does not exist", field="parent") from exc
        except asyncpg.CheckViolationError as exc:
            raise Problem(422, str(exc)) from exc
    assert row is not None
    return JSONResponse(
        store.record_to_dict(row),
        status_code=201,
        headers={"Location": f"/v1/tenants/{row['name']}"},
    )


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
                row = await conn.fetchrow(
                    "UPDATE scheduler.tenants SET frozen = $2 WHERE name = $1 RETURNING *",
                    name,
                    frozen,
                )
        except asyncpg.InsufficientPrivilegeError as exc:
            raise Problem(403, str(exc)) from exc
    if row is None:
        raise Problem(404, f"no tenant named {name!r}")
    return JSONResponse(store.record_to_dict(row))


async def freeze_tenant(request: Request) -> Response:
    return await _set_frozen(request, True)


async def thaw_tenant(request: Request) -> Response:
    return await _set_frozen(request, False)
