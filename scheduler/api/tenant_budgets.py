"""Routes under /v1/tenants/{name}/budget: read (the tenant's tokens too), set (admin only)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scheduler import budgets
from scheduler.api.auth import bearer
from scheduler.api.bodies import parse_json
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.api.reading import read_body
from scheduler.errors import ControlRefused, TenantNotFound
from scheduler.presentation import record_to_dict
from scheduler.repos import tenants as tenant_repo
from scheduler.requests import TENANT_NAME

FIELDS = ("amount", "currency", "period", "action")


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not TENANT_NAME.match(name):
        raise Problem(404, f"no tenant named {name!r}")
    return name


def _amount(value: Any) -> Decimal | None:
    # JSON numbers with a fraction arrive as Decimal (bodies.parse_json); strings keep every
    # digit a client means; bool is an int in Python and is no amount.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise Problem(422, "amount must be a number, a decimal string or null", field="amount")
    try:
        return (
            budgets.check_amount(Decimal(value))
            if not isinstance(value, str)
            else (budgets.parse_amount(value))
        )
    except (ControlRefused, ArithmeticError) as exc:
        raise Problem(422, str(exc), field="amount") from exc


def parse_budget(body: Any) -> budgets.Budget:
    """The budget a PUT body asks for; 422 naming the wrong field."""
    if not isinstance(body, dict):
        raise Problem(422, "the body must be a JSON object")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        raise Problem(
            422, f"unknown field {unknown[0]!r}: expected {', '.join(FIELDS)}", field=unknown[0]
        )
    if "amount" not in body:
        raise Problem(422, "amount is required (null clears the budget)", field="amount")
    for key, default in (("currency", "USD"), ("period", "month"), ("action", "hold")):
        if not isinstance(body.get(key, default), str):
            raise Problem(422, f"{key} must be a string", field=key)
    try:
        return budgets.check(
            budgets.Budget(
                amount=_amount(body["amount"]),
                currency=body.get("currency", "USD"),
                period=body.get("period", "month"),
                action=body.get("action", "hold"),
            )
        )
    except ControlRefused as exc:
        raise Problem(422, str(exc)) from exc


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
