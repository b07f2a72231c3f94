"""The HTTP API: a Starlette app built from its dependencies (``build_app(deps)``)."""

from __future__ import annotations

import hmac

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from scheduler.api import billing, jobs, schedules, status, tenant_budgets, tenants
from scheduler.api.auth import CHALLENGE, bearer
from scheduler.api.context import deps
from scheduler.api.deps import ApiDeps
from scheduler.api.metrics import CONTENT_TYPE
from scheduler.api.openapi import document
from scheduler.api.problems import Problem, handle_problem, problem_response

log = structlog.get_logger(__name__)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    reasons = await deps(request).readiness()
    if reasons:
        return problem_response(503, "not ready: " + "; ".join(reasons), reasons=reasons)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    token = deps(request).metrics_token
    if token is not None:
        # Only this token: the admin's and tenants' tokens are not for a scraper to hold.
        given = bearer(request.headers.get("authorization"))
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Problem(401, "wrong metrics token (SCHEDULER_METRICS_TOKEN)", headers=CHALLENGE)
    render = deps(request).metrics
    body = await render() if render is not None else b""
    return Response(body, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"no route {request.url.path}; see /openapi.json",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return problem_response(
        exc.status_code, detail, instance=request.url.path, headers=dict(exc.headers or {})
    )


async def _gone(request: Request, exc: Exception) -> Response:
    # The client closed its connection mid-body: nobody is left to answer, nothing failed.
    log.debug("http_client_disconnected", path=request.url.path, method=request.method)
    return Response(status_code=400)


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("http_request_failed", path=request.url.path, method=request.method)
    exc.__dict__["scheduler_logged"] = True
    return problem_response(
        500, "the server failed on this request; it has been logged", instance=request.url.path
    )


class _LoggedOnce:
    """Starlette re-raises an error after answering it with a 500 (so the server logs it a
    second time, traceback and all): this outermost layer drops what ``_crash`` logged, and
    logs what failed after the response had started (a broken stream) once."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if not exc.__dict__.get("scheduler_logged"):
                log.exception("http_request_failed", path=scope.get("path"))


def build_app(app_deps: ApiDeps) -> ASGIApp:
    """The ASGI app; every error is application/problem+json."""
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/v1/jobs", jobs.create_job, methods=["POST"]),
        Route("/v1/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}", jobs.get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/cancel", jobs.cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id:int}/freeze", jobs.freeze_job, methods=["POST"]),
        Route("/v1/jobs/{job_id:int}/thaw", jobs.thaw_job, methods=["POST"]),
        Route("/v1/jobs/{job_id:int}/logs", jobs.job_logs, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/usage", jobs.job_usage, methods=["GET"]),
        Route("/v1/arrays/{array_id:int}/cancel", jobs.cancel_array, methods=["POST"]),
        Route("/v1/arrays/{array_id:int}/freeze", jobs.freeze_array, methods=["POST"]),
        Route("/v1/arrays/{array_id:int}/thaw", jobs.thaw_array, methods=["POST"]),
        Route("/v1/tenants", tenants.list_tenants, methods=["GET"]),
        Route("/v1/tenants", tenants.create_tenant, methods=["POST"]),
        Route("/v1/tenants/{name}/freeze", tenants.freeze_tenant, methods=["POST"]),
        Route("/v1/tenants/{name}/thaw", tenants.thaw_tenant, methods=["POST"]),
        Route("/v1/tenants/{name}/budget", tenant_budgets.get_budget, methods=["GET"]),
        Route("/v1/tenants/{name}/budget", tenant_budgets.put_budget, methods=["PUT"]),
        Route("/v1/billing/export", billing.export, methods=["GET"]),
        Route("/v1/billing/statements", billing.list_statements, methods=["GET"]),
        Route("/v1/schedules", schedules.list_schedules, methods=["GET"]),
        Route("/v1/schedules", schedules.create_schedule, methods=["POST"]),
        Route("/v1/schedules/{name}", schedules.get_schedule, methods=["GET"]),
        Route("/v1/schedules/{name}", schedules.delete_schedule, methods=["DELETE"]),
        Route("/v1/schedules/{name}/pause", schedules.pause_schedule, methods=["POST"]),
        Route("/v1/schedules/{name}/resume", schedules.resume_schedule, methods=["POST"]),
        *status.routes(),  # the status page for browsers: /, /jobs/ID, /login
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            Problem: handle_problem,
            HTTPException: _http_error,
            ClientDisconnect: _gone,
            Exception: _crash,
        },
    )
    app.state.deps = app_deps
    return _LoggedOnce(app)
