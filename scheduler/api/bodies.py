"""Parsing and validating JSON request bodies (pure: no I/O)."""

from __future__ import annotations

import functools
import hashlib
import json
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from scheduler.api import schemas
from scheduler.api.body_limits import MAX_BODY_BYTES, MAX_DEPTH, MAX_EXPONENT
from scheduler.api.problems import Problem
from scheduler.requests import ArraySpec, JobRequest

__all__ = ["MAX_BODY_BYTES", "MAX_DEPTH", "MAX_EXPONENT"]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decimal(text: str) -> Decimal:
    value = Decimal(text)
    if value.is_finite() and value and abs(value.adjusted()) > MAX_EXPONENT:
        raise ValueError(f"number {text[:40]} has an exponent beyond +-{MAX_EXPONENT}")
    return value


def _unstorable(value: Any) -> str | None:
    """Why ``value`` cannot be stored although json parsed it: nesting deeper than MAX_DEPTH,
    or a string (key or value) holding an unpaired surrogate such as "\\ud800", which no
    UTF-8 text (nor Postgres) can hold. Iterative: no recursion on hostile input."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                shown = item.encode("utf-8", "backslashreplace").decode()[:60]
                return f"a string holds an unpaired UTF-16 surrogate escape ({shown!r})"
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def parse_json(raw: bytes) -> Any:
    """Parse a body; numbers with a fraction become exact Decimals. 400 on malformed JSON,
    on text that is not UTF-8 (a lone surrogate escape), on absurd exponents or nesting."""
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(raw, parse_float=_decimal, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, ArithmeticError, RecursionError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from exc
    why = _unstorable(value)
    if why is not None:
        raise Problem(400, f"the body is not valid JSON text: {why}")
    return value


class FieldError(ValueError):
    """One field is wrong; the message says what was expected."""


# The bodies the API takes (scheduler.api.schemas): one definition validates and documents.
SUBMIT_FIELDS = schemas.JobCreate
TENANT_FIELDS = schemas.TenantCreate
# The fields of one job (a schedule's template also leaves out tenant, run_at, depends_on).
JOB_FIELDS = tuple(schemas.JobFields.model_fields)


def _interval(node: dict[str, Any]) -> str:
    low = node.get("exclusiveMinimum", node.get("minimum"))
    left = "(" if "exclusiveMinimum" in node else "["
    return f"{left}{low}, {node.get('maximum')}]"


def _expected(node: dict[str, Any]) -> str:
    """What a value of ``node``'s schema is, for "expected ..." messages."""
    kind = node.get("type")
    if "enum" in node:
        return " or ".join(str(v) for v in node["enum"])
    if kind == "integer":
        return f"an integer in {_interval(node)}"
    if kind == "number":
        return f"a number in {_interval(node)}"
    if kind == "boolean":
        return "true or false"
    described = str(node.get("description", ""))
    if kind == "string" and "pattern" in node and not described.startswith(("a ", "an ")):
        return f"a string matching {node['pattern']}"
    if described.startswith(("a ", "an ")) and kind in ("string", "array", "object"):
        return described
    return {"string": "a string", "array": "an array", "object": "an object"}.get(
        str(kind), "a valid value"
    )


# Nouns of the items of bounded arrays, for "at most N <noun>" messages.
_ITEMS = {"depends_on": "job ids", "argv": "arguments"}


def _message(error: Any, node: dict[str, Any], parent: dict[str, Any]) -> str:
    """pydantic's ``error`` as the API's message, from the schema ``node`` of its field."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "model_type":
        return "expected an object"
    if kind == "extra_forbidden":
        return "unknown field; expected one of: " + ", ".join(parent.get("properties", {}))
    if kind == "missing":
        return "required"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be in {_interval(node)}: got {given}"
    if kind == "finite_number":
        return f"must be in {_interval(node)}: got {given}"
    if kind == "string_too_long":
        return f"expected at most {ctx.get('max_length')} characters and no NUL"
    if kind == "too_long" and isinstance(given, list):
        noun = _ITEMS.get(str(error["loc"][-1]), "items")
        return f"at most {ctx.get('max_length')} {noun}: got {len(given)}"
    return f"expected {_expected(node)}"


def _node(schema: dict[str, Any], loc: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of the value at ``loc`` and of the object holding it."""
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        for branch in node.get("anyOf", ()):  # X | None: the X
            if branch.get("type") != "null":
                return resolve(branch)
        return node

    node = parent = resolve(schema)
    for part in loc:
        node = resolve(node)
        parent = node
        if isinstance(part, int) and "items" in node:
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}, parent
    return resolve(node), parent


def _problems(model: type[schemas.Body], exc: ValidationError) -> list[dict[str, str]]:
    schema = _schema(model)
    found = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        node, parent = _node(schema, loc)
        message = _message(error, node, parent)
        # A field of a nested object (a schedule's job template) is reported as
        # "<field>: ...", under the body's field.
        inner = ".".join(str(p) for p in loc[1:])
        found.append(
            {
                "field": str(loc[0]) if loc else "",
                "message": f"{inner}: {message}" if inner else message,
            }
        )
    return found


@functools.cache
def _required(model: type[schemas.Body]) -> frozenset[str]:
    return frozenset(name for name, f in model.model_fields.items() if f.is_required())


@functools.cache
def _schema(model: type[schemas.Body]) -> dict[str, Any]:
    return schemas.json_schema(model)


def _values(value: Any) -> Any:
    """A checked value as the store takes it: an array as an ArraySpec, a nested body (a
    schedule's job template) as the dict of its fields."""
    if isinstance(value, schemas.ArrayCreate):
        return ArraySpec(value.start, value.end, value.max_running)
    if isinstance(value, schemas.Body):
        return {k: _values(v) for k, v in value.given().items()}
    return value


def validate(
    body: Any, model: type[schemas.Body], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check an object against the body ``model``; the fields sent, with their checked
    values. 422 listing every wrong or unknown field. A caller that names ``required`` must
    name the model's own (the model decides; this keeps a caller's belief honest)."""
    if required and set(required) != _required(model):
        raise TypeError(f"{model.__name__} requires {sorted(_required(model))}, not {required}")
    if not isinstance(body, dict):
        raise Problem(422, "the body must be a JSON object")
    try:
        checked = model.model_validate(body)
    except ValidationError as exc:
        errors = _problems(model, exc)
        first = errors[0]
        detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        raise Problem(422, detail, field=first["field"], errors=errors) from exc
    return {k: _values(v) for k, v in checked.given().items()}


def job_request(body: Any, default_tenant: str) -> JobRequest:
    """The job a POST /v1/jobs body asks for."""
    values = validate(body, schemas.JobFields)
    values.setdefault("tenant", default_tenant)
    return JobRequest(**values)


def request_hash(request: JobRequest, array: ArraySpec | None = None) -> str:
    """A digest of what was asked, independent of key order and number formatting."""
    fields = dict(request.__dict__)
    if array is not None:
        # An array's body differs from one job's: the same key cannot make both.
        fields["array"] = [array.start, array.end, array.max_running]
    if fields.get("output_limit_bytes") is None:
        # Added later: left out when unset, so keys stored before it keep their digests.
        fields.pop("output_limit_bytes", None)
    if not fields.get("depends_on"):
        fields.pop("depends_on", None)  # likewise
    if not fields.get("constraints"):
        fields.pop("constraints", None)
    if fields.get("kill_grace_seconds") is None:
        fields.pop("kill_grace_seconds", None)
    canonical = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
