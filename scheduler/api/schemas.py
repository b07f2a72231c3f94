"""Request bodies as typed schemas (pydantic v2), defined once.

Each body the API accepts is one model here. The same model validates the parsed JSON
(:func:`scheduler.api.bodies.validate`, which turns pydantic's errors into the API's
problem+json shape) and gives the JSON Schema of the OpenAPI document
(:func:`components`), so what is documented is what is checked. The bounds are the constants
of :mod:`scheduler.api.body_limits`.

Models are strict: a JSON ``true`` is no integer, ``"5"`` no integer, ``1.5`` no integer.
Numbers with a fraction arrive as exact ``Decimal`` (bodies.parse_json); the decimal fields
also take decimal strings, because responses carry exact decimals as strings.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema

from scheduler import budgets
from scheduler.api import body_limits as lim
from scheduler.budgets import Action, Period
from scheduler.cron import MAX_CRON_LENGTH, MAX_TIMEZONE_LENGTH
from scheduler.errors import ControlRefused
from scheduler.labels import KEY, MAX_LABELS, VALUE, LabelError, check_set
from scheduler.names import NAME_PATTERN, NAME_SHAPE, SCHEDULE_NAME_PATTERN, SCHEDULE_NAME_SHAPE

# --- checks JSON Schema cannot say: each raises ValueError with the message a client sees --


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("no NUL (\\u0000) allowed")
    return value


def _decimal(value: Any) -> Any:
    """int and decimal strings as Decimal; anything else (bool, lists...) is left for the
    strict Decimal check to refuse."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except (InvalidOperation, ValueError):
            return value
        # As bodies.parse_json for JSON numbers: 1e-999999999 is no number Postgres stores.
        if number.is_finite() and number and abs(number.adjusted()) > lim.MAX_EXPONENT:
            raise ValueError(f"number {value[:40]} has an exponent beyond +-{lim.MAX_EXPONENT}")
        return number
    return value


def _timestamp(value: Any) -> datetime:
    message = "expected an RFC 3339 timestamp with a time zone"
    if not isinstance(value, str):
        raise ValueError(message)  # noqa: TRY004 (pydantic wants ValueError)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(message) from exc
    if parsed.tzinfo is None:
        raise ValueError("the timestamp needs a time zone (e.g. Z or +00:00)")
    return parsed


def _argv(value: list[str]) -> list[str]:
    if any("\0" in arg for arg in value):
        raise ValueError("every element must be a string without NUL")
    if not value[0]:
        raise ValueError("the first element (the program) must not be empty")
    return value


def _env(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"key {key!r} must be a non-empty name without '=' or NUL")
        if "\0" in item:
            raise ValueError(f"value of {key!r} must be a string without NUL")
    return value


def _labels(value: dict[str, Any]) -> dict[str, Any]:
    """The rule of migrations/0018's labels_bounded, checked before the database."""
    if len(value) > lim.LABEL_KEYS_MAX:
        raise ValueError(f"at most {lim.LABEL_KEYS_MAX} labels, got {len(value)}")
    for key in value:
        size = len(key.encode("utf-8", "surrogatepass"))
        if not 1 <= size <= lim.LABEL_KEY_BYTES or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in key
        ):
            raise ValueError(
                f"label key {key[:40]!r}: 1-{lim.LABEL_KEY_BYTES} bytes without control characters"
            )
    # Postgres's jsonb refuses the NUL character (\u0000) in any string, key or value.
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\0" in item:
            raise ValueError("no string (key or value) may hold NUL (\\u0000)")
        if isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)
    # As jsonb prints it, near enough; the database has the last word.
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    if len(text.encode("utf-8", "surrogatepass")) > lim.LABELS_BYTES:
        raise ValueError(f"labels take at most {lim.LABELS_BYTES} bytes as JSON")
    return value


def _constraints(value: Any) -> dict[str, str]:
    try:
        return check_set(value)
    except LabelError as exc:
        raise ValueError(str(exc)) from exc


# --- field types: the bounds once, for validation and the document alike --------------------

Int4 = Annotated[int, Field(ge=0, le=lim.INT4_MAX)]
JobId = Annotated[int, Field(ge=1, le=lim.INT8_MAX)]
Cpu = Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, le=lim.CPU_MAX)]
Memory = Annotated[int, Field(ge=lim.MEMORY_MIN, le=lim.MEMORY_MAX)]
Pids = Annotated[int, Field(ge=1, le=lim.PIDS_MAX)]
Timeout = Annotated[Decimal, BeforeValidator(_decimal), Field(gt=0, le=lim.TIMEOUT_MAX)]
Grace = Annotated[Decimal, BeforeValidator(_decimal), Field(ge=0, le=lim.KILL_GRACE_MAX)]
Bps = Annotated[int, Field(ge=1, le=lim.IO_BPS_MAX)]
OutputLimit = Annotated[int, Field(ge=0, le=lim.OUTPUT_LIMIT_MAX)]
TenantName = Annotated[str, Field(pattern=NAME_PATTERN, description=f"a tenant name: {NAME_SHAPE}")]
ImageName = Annotated[str, Field(pattern=NAME_PATTERN, description=f"an image name: {NAME_SHAPE}")]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Argv = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=lim.ARGV_MAX_ITEMS,
        description="a non-empty array of strings (the program, then arguments)",
    ),
    AfterValidator(_argv),
]
Env = Annotated[
    dict[str, str], Field(description="an object of string values"), AfterValidator(_env)
]
Labels = Annotated[
    dict[str, Any],
    Field(
        description="free-form labels, copied to every usage and billing row",
        json_schema_extra={"maxProperties": lim.LABEL_KEYS_MAX},
    ),
    AfterValidator(_labels),
]
Constraints = Annotated[
    dict[
        Annotated[str, Field(pattern=f"^{KEY.pattern}$")],
        Annotated[str, Field(pattern=f"^{VALUE.pattern}$")],
    ],
    BeforeValidator(_constraints),
    Field(
        description="labels a node must have to run the job",
        json_schema_extra={"maxProperties": MAX_LABELS, "additionalProperties": False},
    ),
]
DependsOn = Annotated[
    list[JobId],
    Field(
        max_length=lim.MAX_DEPENDS_ON,
        description="jobs of the same tenant that must succeed first",
    ),
]


class Body(BaseModel):
    """A request body: strict types, no unknown fields, unset fields left to the defaults."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The fields the client sent, with their checked values (not dumped: nested bodies
        stay models, decimals stay Decimal)."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name in self.model_fields_set
        }


def _unset() -> Any:
    """The default of a field left out: the database's default applies (Body.given leaves it
    out). A field whose type has no None refuses an explicit null."""
    return Field(None)


class JobTemplate(Body):
    """A job's own fields: a schedule's template (the tenant is the schedule's, the due time
    its run_at; not depends_on: a fixed job id in a recurring template is met once and then
    forever)."""

    name: Annotated[str, Field(max_length=lim.NAME_MAX_LENGTH), AfterValidator(_no_nul)] = _unset()
    argv: Argv
    env: Env = _unset()
    cwd: Annotated[
        str,
        Field(max_length=lim.PATH_MAX_LENGTH, pattern="^/", description="an absolute path"),
        AfterValidator(_no_nul),
    ] = _unset()
    cpu: Cpu = _unset()
    memory_bytes: Memory = _unset()
    pids_max: Pids = _unset()
    timeout_seconds: Timeout | None = None
    priority: Annotated[int, Field(ge=lim.PRIORITY_MIN, le=lim.PRIORITY_MAX)] = _unset()
    max_attempts: Annotated[int, Field(ge=1, le=lim.ATTEMPTS_MAX)] = _unset()
    labels: Labels = _unset()
    image: ImageName | None = None
    network: bool = _unset()
    io_read_bps: Bps | None = None
    io_write_bps: Bps | None = None
    output_limit_bytes: OutputLimit | None = None
    constraints: Constraints = _unset()
    kill_grace_seconds: Grace | None = None


class JobFields(JobTemplate):
    """A job as POST /v1/jobs makes it: the template's fields, the tenant, run_at and
    depends_on."""

    tenant: TenantName = _unset()
    run_at: Timestamp = _unset()
    depends_on: DependsOn = _unset()


class ArrayCreate(Body):
    """One job per index in [start, end] (at most the operator's max_array_size), at most
    max_running of them running at once."""

    start: Int4
    end: Int4
    max_running: Annotated[int, Field(ge=1, le=lim.INT4_MAX)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        # The messages of the object as a whole, before the fields' own.
        if not isinstance(value, dict):
            raise ValueError(  # noqa: TRY004 (pydantic wants ValueError)
                'expected an object {"start": S, "end": E, "max_running": M}'
            )
        unknown = sorted(set(value) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown keys {unknown}: expected start, end, max_running")
        if "start" not in value or "end" not in value:
            raise ValueError("start and end are required")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ArrayCreate:
        if self.start > self.end:
            raise ValueError(f"start must be <= end: got {self.start} > {self.end}")
        return self


class JobCreate(JobFields):
    """The body of POST /v1/jobs: a job, or with ``array`` one job per index."""

    array: ArrayCreate = _unset()


class TenantCreate(Body):
    """The body of POST /v1/tenants."""

    name: TenantName
    parent: TenantName | None = None
    cpu_limit: Cpu | None = None
    memory_limit_bytes: Memory | None = None
    pids_limit: Pids | None = None
    max_running_jobs: Annotated[int, Field(ge=0, le=lim.MAX_RUNNING_JOBS_MAX)] | None = None
    weight: Annotated[int, Field(ge=lim.WEIGHT_MIN, le=lim.WEIGHT_MAX)] = _unset()
    io_read_bps: Bps | None = None
    io_write_bps: Bps | None = None
    output_limit_bytes: OutputLimit | None = None


class ScheduleCreate(Body):
    """The body of POST /v1/schedules."""

    name: Annotated[
        str,
        Field(
            pattern=SCHEDULE_NAME_PATTERN,
            description=f"a schedule name: {SCHEDULE_NAME_SHAPE}",
        ),
    ]
    tenant: TenantName = _unset()
    cron: Annotated[
        str,
        Field(
            max_length=MAX_CRON_LENGTH,
            description="5 fields: minute hour day-of-month month day-of-week",
        ),
        AfterValidator(_no_nul),
    ]
    timezone: Annotated[
        str,
        Field(max_length=MAX_TIMEZONE_LENGTH, description="an IANA time zone (default UTC)"),
        AfterValidator(_no_nul),
    ] = _unset()
    overlap: Literal["skip", "queue"] = _unset()
    enabled: bool = _unset()
    job: JobTemplate


def _amount(value: Any) -> Any:
    """A budget amount as budgets checks it for the CLI too: a number, a decimal string
    ("none" clears, as on the command line) or null; in [0, 1e15], at most 10 places."""
    # JSON numbers with a fraction arrive as Decimal (bodies.parse_json); strings keep every
    # digit a client means; bool is an int in Python and is no amount.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise ValueError(  # noqa: TRY004 (pydantic wants ValueError)
            "amount must be a number, a decimal string or null"
        )
    try:
        if isinstance(value, str):
            return budgets.parse_amount(value)
        return budgets.check_amount(Decimal(value))
    except (ControlRefused, ArithmeticError) as exc:
        raise ValueError(str(exc)) from exc


class BudgetSet(Body):
    """The body of PUT /v1/tenants/{name}/budget; the amount's range and places are checked by
    budgets.check_amount, as for the CLI."""

    amount: Annotated[
        Decimal | None,
        BeforeValidator(_amount),
        Field(description="the budget, a number or a decimal string; null clears it"),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "minimum": 0, "maximum": float(budgets.MAX_AMOUNT)},
                    {
                        "type": "string",
                        "pattern": f"^[0-9]{{1,{len(str(int(budgets.MAX_AMOUNT))) - 1}}}"
                        f"(\\.[0-9]{{1,{budgets.MAX_PLACES}}})?$",
                    },
                    {"type": "null"},
                ]
            }
        ),
    ]
    currency: Annotated[
        str, Field(pattern="^[A-Z]{3}$", description="an ISO 4217 code: 3 capital letters")
    ] = "USD"
    period: Period = "month"
    action: Action = "hold"


# --- the JSON Schema of the document ----------------------------------------------------------


def _plain(number: Any) -> int | float:
    """A bound as a JSON number (Decimal has no JSON form)."""
    value = Decimal(number)
    return int(value) if value == value.to_integral_value() else float(value)


# pydantic writes the bounds of a validated Decimal under the names of its own constraints.
_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


class _OpenApiSchema(GenerateJsonSchema):
    """pydantic's JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) with what the API
    means: decimals are JSON numbers (decimal strings are also taken, but documented as
    numbers), no titles, and no ``default`` where an unset field means the database's."""

    def decimal_schema(self, schema: CoreSchema) -> JsonSchemaValue:
        return {"type": "number"}

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if schema.get("default") is None:
            return inner
        return {**inner, "default": schema["default"]}


def _keywords(node: Any) -> None:
    """Give every number bound its JSON Schema keyword, as a JSON number."""
    if isinstance(node, list):
        for item in node:
            _keywords(item)
    elif isinstance(node, dict):
        for short, keyword in _BOUNDS.items():
            if short in node:
                node[keyword] = _plain(node.pop(short))
        for item in node.values():
            _keywords(item)


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of one body (nested models under ``$defs``)."""
    schema = model.model_json_schema(schema_generator=_OpenApiSchema)
    _keywords(schema)
    return schema


BODIES: tuple[type[Body], ...] = (JobCreate, TenantCreate, ScheduleCreate, BudgetSet)


def components() -> dict[str, Any]:
    """The request-body schemas, by name, for the document's components (nested models such
    as ArrayCreate and JobTemplate included)."""
    from pydantic.json_schema import models_json_schema  # noqa: PLC0415 (only the document)

    _, top = models_json_schema(
        [(model, "validation") for model in BODIES],
        ref_template="#/components/schemas/{model}",
        schema_generator=_OpenApiSchema,
    )
    schemas: dict[str, Any] = top["$defs"]
    for schema in schemas.values():
        schema.pop("title", None)
    _keywords(schemas)
    return schemas
