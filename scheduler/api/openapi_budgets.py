"""The OpenAPI description of /v1/tenants/{name}/budget and of jobs.pending_reason."""

from __future__ import annotations

from typing import Any

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
_AMOUNT = {"type": ["string", "null"]}


def schemas() -> dict[str, Any]:
    return {
        "BudgetSet": {
            "type": "object",
            "additionalProperties": False,
            "required": ["amount"],
            "properties": {
                "amount": {
                    "anyOf": [
                        {"type": "number", "minimum": 0, "maximum": 1e15},
                        {"type": "string", "pattern": r"^[0-9]{1,15}(\.[0-9]{1,10})?$"},
                        {"type": "null"},
                    ]
                },
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "period": {"enum": ["month", "total"]},
                "action": {"enum": ["hold", "freeze"]},
            },
        },
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


def paths(op: Any, json_body: Any, tenant_param: list[dict[str, Any]]) -> dict[str, Any]:
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
