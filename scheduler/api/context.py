"""Per-request access to the app's dependencies and the authenticated caller."""

from __future__ import annotations

from typing import Any, cast

from starlette.requests import Request

from scheduler.api.auth import Principal, authenticate
from scheduler.api.deps import ApiDeps


def deps(request: Request) -> ApiDeps:
    return cast(ApiDeps, request.app.state.deps)


async def caller(request: Request, conn: Any) -> Principal:
    """Authenticate once per request (cached on the request's state)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    who = await authenticate(conn, request.headers.get("authorization"), deps(request).admin_token)
    request.state.principal = who
    return who
