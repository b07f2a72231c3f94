"""The OpenAPI 3.1 document of the HTTP API. The request bodies' schemas are generated from
the pydantic models that validate them (scheduler.api.schemas), so the document states the
bounds the server checks; the routes and the responses are described here."""

from __future__ import annotations

from typing import Any

from scheduler.api.body_limits import IDEMPOTENCY_KEY_MAX
from scheduler.api.schemas import components
from scheduler.schedules import OVERLAPS

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_DECIMAL = {
    "type": "string",
    "pattern": r"^-?[0-9]+(\.[0-9]+)?(E[+-]?[0-9]+)?$",
    "description": "an exact decimal, as a string",
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _op(
    summary: str, ok: dict[str, dict[str, Any]], errors: dict[int, str], **extra: Any
) -> dict[str, Any]:
    responses: dict[str, Any] = dict(ok)
    responses["401"] = _problem("missing, unknown or revoked bearer token")
    responses["503"] = _problem("the API's database connections stayed busy (Retry-After)")
    for status, text in errors.items():
        responses[str(status)] = _problem(text)
    return {"summary": summary, "security": [{"bearer": []}], "responses": responses, **extra}


_JOB_ID = [
    {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807},
    }
]
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "seconds to wait for the job to end (at most 60; more is taken as 60)",
    "schema": {"type": "integer", "minimum": 0},
}
_TENANT = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]

_STATE = {
    "enum": ["queued", "running", "frozen", "succeeded", "failed", "cancelled", "timed_out", "lost"]
}
# Why a queued job waits (SPEC "Spend and allocation"); null once started or unknown.
PENDING_REASON: dict[str, Any] = {
    "enum": [
        "run_at",
        "dependency",
        "frozen",
        "tenant_frozen",
        "operator_hold",
        "budget",
        "tenant_limit",
        "capacity",
        "max_running_jobs",
        "array_limit",
        "constraint",
        "drained",
        None,
    ]
}

JOB = {
    "type": "object",
    "required": ["id", "tenant", "argv", "state", "desired_state", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "tenant": {"type": "string"},
        "name": {"type": "string"},
        "argv": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "object"},
        "cwd": {"type": "string"},
        "cpu": _DECIMAL,
        "memory_bytes": {"type": "integer"},
        "pids_max": {"type": "integer"},
        "timeout_seconds": {"anyOf": [_DECIMAL, {"type": "null"}]},
        "priority": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "attempts": {"type": "integer"},
        "run_at": {"type": "string", "format": "date-time"},
        "labels": {"type": "object"},
        "state": _STATE,
        "desired_state": {"enum": ["running", "frozen", "cancelled"]},
        "node": {"type": ["string", "null"]},
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["integer", "null"]},
        "oom_killed": {"type": "boolean"},
        "error": {"type": ["string", "null"]},
        "submitted_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "cpu_seconds": {"anyOf": [_DECIMAL, {"type": "null"}]},
        "memory_peak_bytes": {"type": ["integer", "null"]},
        "io_read_bytes": {"type": ["integer", "null"]},
        "io_write_bytes": {"type": ["integer", "null"]},
        "output_limit_bytes": {"type": ["integer", "null"]},
        "depends_on": {"type": "array", "items": {"type": "integer"}},
        "deps_waiting": {"type": "integer"},
        "pending_reason": PENDING_REASON,
        "kill_grace_seconds": _DECIMAL,
    },
}


_TIME = {"type": ["string", "null"], "format": "date-time"}
_AMOUNT = {"type": ["string", "null"]}
# The responses of /v1/schedules (ScheduleCreate, the body, is generated).
_SCHEDULE: dict[str, Any] = {
    "Schedule": {
        "type": "object",
        "required": ["name", "tenant", "cron", "timezone", "job", "enabled", "overlap"],
        "properties": {
            "name": {"type": "string"},
            "tenant": {"type": "string"},
            "cron": {"type": "string"},
            "timezone": {"type": "string"},
            "job": {"type": "object"},
            "enabled": {"type": "boolean"},
            "overlap": {"enum": list(OVERLAPS)},
            "last_run_at": _TIME,
            "next_run_at": _TIME,
            "last_job_id": {"type": ["integer", "null"]},
            "skipped_runs": {"type": "integer"},
            "last_skipped_at": _TIME,
            "error": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "ScheduleList": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}}
        },
    },
}
# The answer of /v1/tenants/{name}/budget (BudgetSet, the body, is generated).
_BUDGET: dict[str, Any] = {
    "Budget": {
        "type": "object",
        "required": ["tenant", "budget"],
        "properties": {
            "tenant": {"type": "string"},
            "budget": _AMOUNT,
            "currency": {"type": "string"},
            "period": {"enum": ["month", "total"]},
            "action": {"enum": ["hold", "freeze"]},
            "spend": {"type": "string"},
            "reached": {"type": "boolean"},
        },
    },
}


def _schedule_paths() -> dict[str, Any]:
    """The /v1/schedules routes."""
    op, json_body = _op, _json
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    tenant = {"name": "tenant", "in": "query", "schema": {"type": "string"}}
    one = [name, tenant]
    missing = {404: "no such schedule visible to this token (?tenant= names its tenant)"}
    return {
        "/v1/schedules": {
            "get": op(
                "List schedules",
                {"200": json_body("ScheduleList", "the schedules visible to this token")},
                {},
                parameters=[tenant],
            ),
            "post": op(
                "Create a schedule",
                {"201": json_body("Schedule", "the schedule, with its first due time")},
                {
                    400: "malformed JSON",
                    403: "the token may not create schedules for that tenant",
                    409: "the tenant has a schedule of that name",
                    413: "body too large",
                    422: "a field is wrong: the cron expression, the time zone, the job "
                    "template (checked as a job insert) or an unknown tenant",
                },
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ScheduleCreate"}
                        }
                    },
                },
            ),
        },
        "/v1/schedules/{name}": {
            "get": op(
                "One schedule",
                {"200": json_body("Schedule", "the schedule")},
                missing,
                parameters=one,
            ),
            "delete": op(
                "Delete a schedule (the jobs it made stay)",
                {"204": {"description": "deleted"}},
                missing,
                parameters=one,
            ),
        },
        "/v1/schedules/{name}/pause": {
            "post": op(
                "Pause a schedule",
                {"200": json_body("Schedule", "the schedule, enabled false")},
                missing,
                parameters=one,
            )
        },
        "/v1/schedules/{name}/resume": {
            "post": op(
                "Resume a schedule, planned from now",
                {"200": json_body("Schedule", "the schedule, enabled true")},
                {**missing, 409: "its cron expression or time zone is no longer valid"},
                parameters=one,
            )
        },
    }


def _budget_paths() -> dict[str, Any]:
    """/v1/tenants/{name}/budget."""
    op, json_body, tenant_param = _op, _json, _TENANT
    return {
        "/v1/tenants/{name}/budget": {
            "get": op(
                "A tenant's budget and its subtree's spend this period",
                {"200": json_body("Budget", "the budget (budget null: none)")},
                {404: "no such tenant visible to this token"},
                parameters=tenant_param,
            ),
            "put": op(
                "Set or clear (amount null) a tenant's budget (admin token only)",
                {"200": json_body("Budget", "the budget now")},
                {
                    400: "the body is not JSON",
                    403: "a tenant token may not set budgets",
                    404: "no such tenant",
                    408: "the body did not arrive within http_body_timeout_seconds",
                    413: "body too large",
                    422: "a field is wrong",
                },
                parameters=tenant_param,
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/BudgetSet"}}
                    },
                },
            ),
        }
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    steer_errors = {404: "no such job visible to this token", 409: "the job already finished"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "scheduler",
            "version": "1",
            "description": "Submit, observe and steer isolated, accounted jobs.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                    },
                },
                **components(),
                "Job": JOB,
                "JobArray": {
                    "type": "object",
                    "required": ["array_id", "items"],
                    "properties": {
                        "array_id": {"type": "integer"},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                    },
                },
                "ArraySteered": {
                    "type": "object",
                    "required": ["array_id", "changed"],
                    "properties": {
                        "array_id": {"type": "integer"},
                        "changed": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "JobList": {
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "Tenant": {
                    "type": "object",
                    "required": ["name", "frozen", "weight"],
                    "properties": {
                        "name": {"type": "string"},
                        "parent": {"type": ["string", "null"]},
                        "frozen": {"type": "boolean"},
                        "weight": {"type": "integer"},
                    },
                },
                "TenantList": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}}
                    },
                },
                **_SCHEDULE,
                **_BUDGET,
                "UsageList": {
                    "type": "object",
                    "required": ["job_id", "items"],
                    "properties": {
                        "job_id": {"type": "integer"},
                        "items": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
        "paths": {
            "/v1/jobs": {
                "post": _op(
                    "Submit a job",
                    {
                        "201": {
                            "description": "the job (or, for a repeated Idempotency-Key with"
                            " the same body, the first one); with array, the array's id and"
                            " its members",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Job"},
                                            {"$ref": "#/components/schemas/JobArray"},
                                        ]
                                    }
                                }
                            },
                        }
                    },
                    {
                        400: "malformed JSON or Idempotency-Key",
                        403: "the token may not submit for that tenant",
                        408: "the body did not arrive within http_body_timeout_seconds",
                        413: "body too large",
                        503: "too many bodies at once, or no free API database connection",
                        422: "a field is wrong or unknown, the tenant does not exist, or the "
                        "Idempotency-Key was used with another body",
                    },
                    parameters=[
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": IDEMPOTENCY_KEY_MAX,
                            },
                        }
                    ],
                    requestBody={
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/JobCreate"}
                            }
                        },
                    },
                ),
                "get": _op(
                    "List jobs, newest first",
                    {"200": _json("JobList", "a page of jobs")},
                    {400: "bad tenant, state, limit or cursor"},
                    parameters=[
                        {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                        {"name": "state", "in": "query", "schema": _STATE},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "array",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                ),
            },
            **{
                f"/v1/arrays/{{array_id}}/{verb}": {
                    "post": _op(
                        f"{verb.capitalize()} every unfinished member of an array",
                        {"200": _json("ArraySteered", "the members changed")},
                        {404: "no such array visible to this token"},
                        parameters=[
                            {
                                "name": "array_id",
                                "in": "path",
                                "required": True,
                                "schema": {"type": "integer", "minimum": 1},
                            }
                        ],
                    )
                }
                for verb in ("cancel", "freeze", "thaw")
            },
            "/v1/jobs/{job_id}": {
                "get": _op(
                    "One job; with wait=N, answered when it ends or after N seconds",
                    {"200": _json("Job", "the job")},
                    {400: "wait is not an integer", 404: "no such job visible to this token"},
                    parameters=[*_JOB_ID, _WAIT],
                )
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": _op(
                    "Cancel a job (SIGTERM, then the kill after its kill_grace_seconds)",
                    {"200": _json("Job", "the job, desired_state cancelled")},
                    {**steer_errors, 400: "now is not true or false"},
                    parameters=[
                        *_JOB_ID,
                        {
                            "name": "now",
                            "in": "query",
                            "description": "true: kill at once (sets kill_grace_seconds to 0)",
                            "schema": {"type": "boolean", "default": False},
                        },
                    ],
                )
            },
            "/v1/jobs/{job_id}/freeze": {
                "post": _op(
                    "Freeze a job",
                    {"200": _json("Job", "the job, desired_state frozen")},
                    steer_errors,
                    parameters=_JOB_ID,
                )
            },
            "/v1/jobs/{job_id}/thaw": {
                "post": _op(
                    "Thaw a job",
                    {"200": _json("Job", "the job, desired_state running")},
                    steer_errors,
                    parameters=_JOB_ID,
                )
            },
            "/v1/jobs/{job_id}/usage": {
                "get": _op(
                    "A job's billing rows",
                    {"200": _json("UsageList", "usage rows by seq")},
                    {404: "no such job visible to this token"},
                    parameters=_JOB_ID,
                )
            },
            "/v1/jobs/{job_id}/logs": {
                "get": _op(
                    "A job's output, streamed from disk",
                    {
                        "200": {
                            "description": "stdout or stderr (its last `tail` bytes); with"
                            " follow=true, streamed until the job ends",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "206": {
                            "description": "the one byte range the Range header asked for",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                    },
                    {
                        400: "bad stream, follow or tail; tail with Range; follow with Range",
                        404: "no such job, or it ran on another node",
                        416: "the range starts past the end of the output",
                    },
                    parameters=[
                        *_JOB_ID,
                        {"name": "stream", "in": "query", "schema": {"enum": ["stdout", "stderr"]}},
                        {"name": "follow", "in": "query", "schema": {"enum": ["true", "false"]}},
                        {
                            "name": "tail",
                            "in": "query",
                            "description": "only the last this many bytes",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 9223372036854775807,
                            },
                        },
                        {
                            "name": "Range",
                            "in": "header",
                            "required": False,
                            "description": "one range: bytes=A-B, bytes=A- or bytes=-N",
                            "schema": {"type": "string"},
                        },
                    ],
                )
            },
            "/v1/tenants": {
                "get": _op("List tenants", {"200": _json("TenantList", "visible tenants")}, {}),
                "post": _op(
                    "Create a tenant",
                    {"201": _json("Tenant", "the tenant")},
                    {
                        400: "malformed JSON",
                        403: "a tenant token may only create children",
                        408: "the body did not arrive within http_body_timeout_seconds",
                        409: "the tenant exists",
                        413: "body too large",
                        503: "too many bodies at once, or no free API database connection",
                        422: "a field is wrong or the parent does not exist",
                    },
                    requestBody={
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TenantCreate"}
                            }
                        },
                    },
                ),
            },
            "/v1/tenants/{name}/freeze": {
                "post": _op(
                    "Freeze a tenant",
                    {"200": _json("Tenant", "the tenant")},
                    {404: "no such tenant visible to this token"},
                    parameters=_TENANT,
                )
            },
            "/v1/tenants/{name}/thaw": {
                "post": _op(
                    "Thaw a tenant",
                    {"200": _json("Tenant", "the tenant")},
                    {404: "no such tenant visible to this token"},
                    parameters=_TENANT,
                )
            },
            "/v1/billing/export": {
                "get": _op(
                    "Priced usage of [from, to) as csv, json or FinOps FOCUS 1.2 csv",
                    {
                        "200": {
                            "description": "the export (byte-identical when repeated)",
                            "content": {
                                "text/csv": {"schema": {"type": "string"}},
                                "application/json": {"schema": {}},
                            },
                        }
                    },
                    {
                        400: "missing or bad from, to or format",
                        404: "no such tenant visible to this token",
                        422: "an empty window or a usage row without a rate",
                    },
                    parameters=[
                        {
                            "name": "from",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "to",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"enum": ["csv", "json", "focus"]},
                        },
                        {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "group_by",
                            "in": "query",
                            "description": "label:KEY: costs summed by that label (csv, json)",
                            "schema": {"type": "string"},
                        },
                    ],
                )
            },
            "/v1/billing/statements": {
                "get": _op(
                    "Closed monthly statements, each with its exact body and SHA-256",
                    {
                        "200": {
                            "description": "the statements",
                            "content": {"application/json": {"schema": {}}},
                        }
                    },
                    {
                        400: "a period that is not YYYY-MM",
                        404: "no such tenant visible to this token",
                    },
                    parameters=[
                        {"name": "period", "in": "query", "schema": {"type": "string"}},
                        {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                    ],
                )
            },
            **_schedule_paths(),
            **_budget_paths(),
            "/healthz": {
                "get": {
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Database, migrations and cgroup root are usable",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": _problem("not ready, with reasons"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (bearer token when metrics_token is set)",
                    "responses": {
                        "200": {"description": "text exposition", "content": {"text/plain": {}}},
                        "401": _problem("metrics_token is set and was not sent"),
                    },
                }
            },
        },
    }
