"""Routes under /v1/tenants/{name}/budget: read (the tenant's tokens too), set (admin only)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scheduler import budgets
from scheduler.api.auth import bearer
from scheduler.api.bodies import parse_json, validate
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.api.reading import read_body
from scheduler.api.schemas import BudgetSet
from scheduler.errors import ControlRefused, TenantNotFound
from scheduler.presentation import record_to_dict
from scheduler.repos import tenants as tenant_repo
from scheduler.requests import TENANT_NAME


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not TENANT_NAME.match(name):
        raise Problem(404, f"no tenant named {name!r}")
    return name


def parse_budget(body: Any) -> budgets.Budget:
    """The budget a PUT body asks for (schemas.BudgetSet); 422 naming the wrong field. The
    amount's range and places are budgets.check's, as for the CLI."""
    values = validate(body, BudgetSet)
    try:
        return budgets.check(budgets.Budget(**values))
    except ControlRefused as exc:
        raise Problem(422, str(exc), field="amount") from exc


async def _status(conn: Any, name: str) -> dict[str, Any]:
    rows = await budgets.status(conn, name)
    if not rows:
        return {"tenant": name, "budget": None}
    return record_to_dict(rows[0])


async def get_budget(request: Request) -> Response:
    name = _name(request)
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        if not who.sees(name):
            raise Problem(404, f"no tenant named {name!r}")
        if not await tenant_repo.exists(conn, name):
            raise Problem(404, f"no tenant named {name!r}")
        return JSONResponse(await _status(conn, name))


async def put_budget(request: Request) -> Response:
    bearer(request.headers.get("authorization"))
    name = _name(request)
    budget = parse_budget(parse_json(await read_body(request)))
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        if not who.is_admin:
            # A tenant may not raise its own budget, nor its children's.
            raise Problem(403, "only the operator (admin token) sets budgets")
        try:
            await budgets.set_budget(conn, name, budget)
        except TenantNotFound as exc:
            raise Problem(404, str(exc)) from exc
        except ControlRefused as exc:
            raise Problem(422, str(exc)) from exc
        return JSONResponse(await _status(conn, name))
