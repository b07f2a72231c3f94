"""Parsing and validating JSON request bodies (pure: no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from scheduler.api.problems import Problem
from scheduler.labels import LabelError, check_set
from scheduler.requests import INT4_MAX, TENANT_NAME, ArraySpec, JobRequest

MAX_BODY_BYTES = 1 << 20


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Exponents past this are refused: turning 1e999999999 into an int or a float for storage
# would take the CPU for minutes, or become an infinity Postgres refuses.
MAX_EXPONENT = 1000
# JSON nested deeper than this is refused (json.loads would recurse until RecursionError).
MAX_DEPTH = 64


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


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError(f"expected an integer in [{lo}, {hi}]")
        if not lo <= v <= hi:
            raise FieldError(f"must be in [{lo}, {hi}]: got {v}")
        return v

    return check


def _number(lo_exclusive: Decimal, hi: Decimal) -> Callable[[Any], Decimal]:
    def check(v: Any) -> Decimal:
        # Decimal strings are accepted too: responses carry exact decimals as strings.
        if isinstance(v, str):
            try:
                v = Decimal(v)
            except ArithmeticError as exc:
                raise FieldError(f"expected a number in ({lo_exclusive}, {hi}]") from exc
        if isinstance(v, bool) or not isinstance(v, int | Decimal):
            raise FieldError(f"expected a number in ({lo_exclusive}, {hi}]")
        d = Decimal(v)
        if not (d.is_finite() and lo_exclusive < d <= hi):
            raise FieldError(f"must be in ({lo_exclusive}, {hi}]: got {v}")
        return d

    return check


def _grace(v: Any) -> Decimal:
    """Seconds in [0, 3600] (0: killed at once), as jobs.kill_grace_seconds allows."""
    d = _number(Decimal(-1), Decimal(3600))(v)
    if d < 0:
        raise FieldError(f"must be in [0, 3600]: got {v}")
    return d


def _text(
    max_len: int, pattern: re.Pattern[str] | None = None, hint: str = ""
) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise FieldError("expected a string")
        if len(v) > max_len or "\0" in v:
            raise FieldError(f"expected at most {max_len} characters and no NUL")
        if pattern is not None and not pattern.match(v):
            raise FieldError(hint or f"must match {pattern.pattern}")
        return v

    return check


def _argv(v: Any) -> list[str]:
    if not isinstance(v, list) or not v or len(v) > 4096:
        raise FieldError("expected a non-empty array of strings (the program, then arguments)")
    if not all(isinstance(a, str) and "\0" not in a for a in v):
        raise FieldError("every element must be a string without NUL")
    if not v[0]:
        raise FieldError("the first element (the program) must not be empty")
    return list(v)


def _env(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise FieldError("expected an object of string values")
    for key, value in v.items():
        if not key or "=" in key or "\0" in key:
            raise FieldError(f"key {key!r} must be a non-empty name without '=' or NUL")
        if not isinstance(value, str) or "\0" in value:
            raise FieldError(f"value of {key!r} must be a string without NUL")
    return dict(v)


# The bounds of migrations/0018 (job_labels_bounded): labels reach every line of a bill.
LABEL_KEYS_MAX = 64
LABEL_KEY_BYTES = 128
LABELS_BYTES = 8192


def _labels(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise FieldError("expected an object")
    if len(v) > LABEL_KEYS_MAX:
        raise FieldError(f"at most {LABEL_KEYS_MAX} labels, got {len(v)}")
    for key in v:
        size = len(key.encode("utf-8", "surrogatepass"))
        if not 1 <= size <= LABEL_KEY_BYTES or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise FieldError(
                f"label key {key[:40]!r}: 1-{LABEL_KEY_BYTES} bytes without control characters"
            )
    # Postgres's jsonb refuses the NUL character (\u0000) in any string, key or value.
    stack: list[Any] = [v]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\0" in item:
            raise FieldError("no string (key or value) may hold NUL (\\u0000)")
        if isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)
    # As jsonb prints it, near enough; the database has the last word.
    text = json.dumps(v, ensure_ascii=False, separators=(", ", ": "), default=str)
    if len(text.encode("utf-8", "surrogatepass")) > LABELS_BYTES:
        raise FieldError(f"labels take at most {LABELS_BYTES} bytes as JSON")
    return dict(v)


def _constraints(v: Any) -> dict[str, str]:
    try:
        return check_set(v)
    except LabelError as exc:
        raise FieldError(str(exc)) from exc


def _array(v: Any) -> ArraySpec:
    """{"start": S, "end": E, "max_running": M}: the range is checked against the operator's
    max_array_size by the store (requests.ArraySpec.check)."""
    if not isinstance(v, dict):
        raise FieldError('expected an object {"start": S, "end": E, "max_running": M}')
    unknown = sorted(set(v) - {"start", "end", "max_running"})
    if unknown:
        raise FieldError(f"unknown keys {unknown}: expected start, end, max_running")
    if "start" not in v or "end" not in v:
        raise FieldError("start and end are required")
    start, end = _int(0, INT4_MAX)(v["start"]), _int(0, INT4_MAX)(v["end"])
    if start > end:
        raise FieldError(f"start must be <= end: got {start} > {end}")
    cap = v.get("max_running")
    return ArraySpec(start, end, None if cap is None else _int(1, INT4_MAX)(cap))


def _cwd(v: Any) -> str:
    text = _text(4096)(v)
    if not text.startswith("/"):
        raise FieldError("expected an absolute path")
    return text


def _timestamp(v: Any) -> datetime:
    if not isinstance(v, str):
        raise FieldError("expected an RFC 3339 timestamp with a time zone")
    try:
        value = datetime.fromisoformat(v)
    except ValueError as exc:
        raise FieldError("expected an RFC 3339 timestamp with a time zone") from exc
    if value.tzinfo is None:
        raise FieldError("the timestamp needs a time zone (e.g. Z or +00:00)")
    return value


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise FieldError("expected true or false")
    return v


# As scheduler.depends_on_max() (migrations/0014): checked here first so that a body of
# 100,000 ids is refused before it reaches the database.
MAX_DEPENDS_ON = 1000


def _job_ids(v: Any) -> list[int]:
    if not isinstance(v, list):
        raise FieldError("expected an array of job ids")
    if len(v) > MAX_DEPENDS_ON:
        raise FieldError(f"at most {MAX_DEPENDS_ON} job ids: got {len(v)}")
    check = _int(1, 2**63 - 1)
    return [check(item) for item in v]


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


JOB_FIELDS: dict[str, Callable[[Any], Any]] = {
    "tenant": _text(63, TENANT_NAME, "expected a tenant name: [a-z0-9][a-z0-9_-]{0,62}"),
    "name": _text(200),
    "argv": _argv,
    "env": _env,
    "cwd": _cwd,
    "cpu": _number(Decimal(0), Decimal(4096)),
    "memory_bytes": _int(1 << 20, 1 << 62),
    "pids_max": _int(1, 4_194_304),
    "timeout_seconds": _optional(_number(Decimal(0), Decimal(10) ** 8)),
    "priority": _int(-1000, 1000),
    "max_attempts": _int(1, 100),
    "run_at": _timestamp,
    "labels": _labels,
    "image": _optional(_text(63, TENANT_NAME, "expected an image name: [a-z0-9][a-z0-9_-]{0,62}")),
    "network": _bool,
    "io_read_bps": _optional(_int(1, 1 << 50)),
    "io_write_bps": _optional(_int(1, 1 << 50)),
    "output_limit_bytes": _optional(_int(0, 1 << 50)),
    "depends_on": _job_ids,
    "constraints": _constraints,
    "kill_grace_seconds": _optional(_grace),
}
# POST /v1/jobs only (not a schedule's template): the body makes an array.
SUBMIT_FIELDS: dict[str, Callable[[Any], Any]] = {**JOB_FIELDS, "array": _array}
TENANT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": JOB_FIELDS["tenant"],
    "parent": _optional(JOB_FIELDS["tenant"]),
    "cpu_limit": _optional(_number(Decimal(0), Decimal(4096))),
    "memory_limit_bytes": _optional(_int(1 << 20, 1 << 62)),
    "pids_limit": _optional(_int(1, 4_194_304)),
    "max_running_jobs": _optional(_int(0, 1_000_000)),
    "weight": _int(1, 10000),
    "io_read_bps": _optional(_int(1, 1 << 50)),
    "io_write_bps": _optional(_int(1, 1 << 50)),
    "output_limit_bytes": _optional(_int(0, 1 << 50)),
}


def validate(
    body: Any, fields: dict[str, Callable[[Any], Any]], required: tuple[str, ...]
) -> dict[str, Any]:
    """Check an object against ``fields``; 422 listing every wrong or unknown field."""
    if not isinstance(body, dict):
        raise Problem(422, "the body must be a JSON object")
    errors = [
        {"field": k, "message": "unknown field; expected one of: " + ", ".join(fields)}
        for k in body
        if k not in fields
    ]
    errors += [{"field": k, "message": "required"} for k in required if k not in body]
    values: dict[str, Any] = {}
    for key, check in fields.items():
        if key in body:
            try:
                values[key] = check(body[key])
            except FieldError as exc:
                errors.append({"field": key, "message": str(exc)})
    if errors:
        first = errors[0]
        raise Problem(422, f"{first['field']}: {first['message']}", errors=errors)
    return values


def job_request(body: Any, default_tenant: str) -> JobRequest:
    """The job a POST /v1/jobs body asks for."""
    values = validate(body, JOB_FIELDS, ("argv",))
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
