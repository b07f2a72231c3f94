"""The /v1/schedules part of the OpenAPI document (merged by :mod:`scheduler.api.openapi`)."""

from __future__ import annotations

from typing import Any

from scheduler.cron import MAX_CRON_LENGTH, MAX_TIMEZONE_LENGTH
from scheduler.schedules import OVERLAPS, SCHEDULE_NAME

SCHEDULE_NAME_PATTERN = SCHEDULE_NAME.pattern
_TIME = {"type": ["string", "null"], "format": "date-time"}


def schemas(job_create: dict[str, Any]) -> dict[str, Any]:
    """ScheduleCreate, Schedule and ScheduleList; the template is a JobCreate without the
    tenant (the schedule's) and run_at (the due time)."""
    template = {
        **job_create,
        "properties": {
            k: v for k, v in job_create["properties"].items() if k not in ("tenant", "run_at")
        },
    }
    return {
        "ScheduleCreate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "cron", "job"],
            "properties": {
                "name": {"type": "string", "pattern": SCHEDULE_NAME_PATTERN},
                "tenant": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
                "cron": {
                    "type": "string",
                    "maxLength": MAX_CRON_LENGTH,
                    "description": "5 fields: minute hour day-of-month month day-of-week",
                },
                "timezone": {
                    "type": "string",
                    "maxLength": MAX_TIMEZONE_LENGTH,
                    "description": "an IANA time zone (default UTC)",
                },
                "overlap": {"enum": list(OVERLAPS)},
                "enabled": {"type": "boolean"},
                "job": template,
            },
        },
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


def paths(op: Any, json_body: Any) -> dict[str, Any]:
    """The routes; ``op`` and ``json_body`` are openapi's _op and _json."""
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
