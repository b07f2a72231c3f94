"""Every rule of every request body, against the Starlette app built in-process: no database,
no root, no cgroups. Bodies are checked before a connection is taken (api/reading.py), so the
app is given a pool that refuses to be used: a wrong body must be answered 4xx naming the
field without asking it, and a right one must get past the checks (to the pool, 503 here).

The last tests hold the OpenAPI document to the same models: a body refused for its shape or
bounds is outside the document's schema too.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from scheduler import budgets
from scheduler.api import body_limits as lim
from scheduler.api.app import build_app
from scheduler.api.dbwait import ApiPool
from scheduler.api.deps import ApiDeps
from scheduler.api.openapi import document
from scheduler.api.problems import Problem

AUTH = {"Authorization": "Bearer unit-test-token"}
JOBS, TENANTS, SCHEDULES = "/v1/jobs", "/v1/tenants", "/v1/schedules"
BUDGET = "/v1/tenants/acme/budget"
REACHED_POOL = 503


class _RefusingPool:
    """Stands where the API's pool is: counts the requests that got past the body checks."""

    def __init__(self) -> None:
        self.asked = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        self.asked += 1
        raise Problem(REACHED_POOL, "no database in this test")
        yield  # pragma: no cover (a generator for asynccontextmanager)


async def _ready() -> list[str]:
    return []


@pytest.fixture
def pool() -> _RefusingPool:
    return _RefusingPool()


pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(pool: _RefusingPool, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    deps = ApiDeps(
        pool=cast(ApiPool, pool),
        admin_token="unit-test-token",
        runs_dir=tmp_path,
        node="unit",
        readiness=_ready,
    )
    transport = httpx.ASGITransport(app=build_app(deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://unit") as test_client:
        yield test_client


async def _send(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    method = "PUT" if path == BUDGET else "POST"
    return await client.request(
        method, path, content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )


def _job(**fields: Any) -> dict[str, Any]:
    return {"argv": ["true"], **fields}


def _schedule(**fields: Any) -> dict[str, Any]:
    return {"name": "nightly", "cron": "0 3 * * *", "job": {"argv": ["true"]}, **fields}


def _template(**fields: Any) -> dict[str, Any]:
    return _schedule(job={"argv": ["true"], **fields})


# (path, body, field named by the problem, a fragment of its message)
REFUSED: list[tuple[str, Any, str, str]] = [
    # The body as a whole.
    (JOBS, [1, 2], "", "must be a JSON object"),
    (JOBS, {}, "argv", "required"),
    (JOBS, _job(state="succeeded"), "state", "unknown field"),
    (TENANTS, {}, "name", "required"),
    (TENANTS, {"name": "a", "frozen": True}, "frozen", "unknown field"),
    (SCHEDULES, {"cron": "* * * * *", "job": {"argv": ["x"]}}, "name", "required"),
    (SCHEDULES, {"name": "n", "job": {"argv": ["x"]}}, "cron", "required"),
    (SCHEDULES, {"name": "n", "cron": "* * * * *"}, "job", "required"),
    (SCHEDULES, _schedule(surprise=1), "surprise", "unknown field"),
    (BUDGET, {}, "amount", "required"),
    (BUDGET, {"amount": 1, "limit": 2}, "limit", "unknown field"),
    (BUDGET, "not an object", "", "must be a JSON object"),
    # tenant and image: the name rule.
    (JOBS, _job(tenant="Acme"), "tenant", "expected a tenant name"),
    (JOBS, _job(tenant="a" * 64), "tenant", "expected a tenant name"),
    (JOBS, _job(tenant="-a"), "tenant", "expected a tenant name"),
    (JOBS, _job(tenant="a\n"), "tenant", "expected a tenant name"),
    (JOBS, _job(tenant=None), "tenant", "expected a tenant name"),
    (JOBS, _job(tenant=7), "tenant", "expected a tenant name"),
    (JOBS, _job(image="Base"), "image", "expected an image name"),
    (JOBS, _job(image=["base"]), "image", "expected an image name"),
    # name: free text, bounded, no NUL.
    (JOBS, _job(name="n" * (lim.NAME_MAX_LENGTH + 1)), "name", "at most 200 characters"),
    (JOBS, _job(name="a\0b"), "name", "NUL"),
    (JOBS, _job(name=5), "name", "expected a string"),
    # argv.
    (JOBS, {"argv": []}, "argv", "expected a non-empty array"),
    (JOBS, {"argv": "true"}, "argv", "expected a non-empty array"),
    (JOBS, {"argv": None}, "argv", "expected a non-empty array"),
    (JOBS, {"argv": ["x"] * (lim.ARGV_MAX_ITEMS + 1)}, "argv", "at most 4096 arguments"),
    (JOBS, {"argv": ["true", 1]}, "argv", "1: expected a string"),
    (JOBS, {"argv": ["true", "a\0"]}, "argv", "without NUL"),
    (JOBS, {"argv": [""]}, "argv", "the first element (the program) must not be empty"),
    # env.
    (JOBS, _job(env=["A=1"]), "env", "expected an object of string values"),
    (JOBS, _job(env={"A": 1}), "env", "A: expected a string"),
    (JOBS, _job(env={"A=B": "1"}), "env", "without '=' or NUL"),
    (JOBS, _job(env={"": "1"}), "env", "non-empty name"),
    (JOBS, _job(env={"A": "x\0"}), "env", "without NUL"),
    # cwd.
    (JOBS, _job(cwd="relative/dir"), "cwd", "expected an absolute path"),
    (JOBS, _job(cwd="/" + "d" * lim.PATH_MAX_LENGTH), "cwd", "at most 4096 characters"),
    (JOBS, _job(cwd="/a\0"), "cwd", "NUL"),
    (JOBS, _job(cwd=None), "cwd", "expected an absolute path"),
    # cpu: (0, 4096], numbers or decimal strings, never bool or null.
    (JOBS, _job(cpu=0), "cpu", "must be in (0, 4096]: got 0"),
    (JOBS, _job(cpu=-0.5), "cpu", "must be in (0, 4096]"),
    (JOBS, _job(cpu=4096.5), "cpu", "must be in (0, 4096]"),
    (JOBS, _job(cpu="4097"), "cpu", "must be in (0, 4096]"),
    (JOBS, _job(cpu="NaN"), "cpu", "must be in (0, 4096]"),
    (JOBS, _job(cpu="two"), "cpu", "expected a number in (0, 4096]"),
    (JOBS, _job(cpu="1e-999999999"), "cpu", "exponent beyond +-1000"),
    (JOBS, _job(timeout_seconds="1e-1001"), "timeout_seconds", "exponent beyond +-1000"),
    (JOBS, _job(cpu=True), "cpu", "expected a number in (0, 4096]"),
    (JOBS, _job(cpu=None), "cpu", "expected a number in (0, 4096]"),
    (JOBS, _job(cpu=[1]), "cpu", "expected a number in (0, 4096]"),
    # The integers: each bound, and what is no integer.
    (JOBS, _job(memory_bytes=lim.MEMORY_MIN - 1), "memory_bytes", "must be in [1048576, "),
    (JOBS, _job(memory_bytes=lim.MEMORY_MAX + 1), "memory_bytes", "must be in [1048576, "),
    (JOBS, _job(memory_bytes=1.5e6), "memory_bytes", "expected an integer"),
    (JOBS, _job(memory_bytes="2000000"), "memory_bytes", "expected an integer"),
    (JOBS, _job(pids_max=0), "pids_max", "must be in [1, 4194304]: got 0"),
    (JOBS, _job(pids_max=lim.PIDS_MAX + 1), "pids_max", "must be in [1, 4194304]"),
    (JOBS, _job(pids_max=True), "pids_max", "expected an integer in [1, 4194304]"),
    (JOBS, _job(priority=-1001), "priority", "must be in [-1000, 1000]"),
    (JOBS, _job(priority=1001), "priority", "must be in [-1000, 1000]"),
    (JOBS, _job(priority=None), "priority", "expected an integer in [-1000, 1000]"),
    (JOBS, _job(max_attempts=0), "max_attempts", "must be in [1, 100]"),
    (JOBS, _job(max_attempts=101), "max_attempts", "must be in [1, 100]"),
    (JOBS, _job(io_read_bps=0), "io_read_bps", "must be in [1, 1125899906842624]"),
    (JOBS, _job(io_write_bps=lim.IO_BPS_MAX + 1), "io_write_bps", "must be in [1, "),
    (JOBS, _job(io_read_bps="1"), "io_read_bps", "expected an integer"),
    (JOBS, _job(output_limit_bytes=-1), "output_limit_bytes", "must be in [0, "),
    (JOBS, _job(output_limit_bytes=lim.OUTPUT_LIMIT_MAX + 1), "output_limit_bytes", "must be"),
    # timeout_seconds: (0, 1e8] or null; kill_grace_seconds: [0, 3600] or null.
    (JOBS, _job(timeout_seconds=0), "timeout_seconds", "must be in (0, 100000000]"),
    (JOBS, _job(timeout_seconds=10**8 + 1), "timeout_seconds", "must be in (0, 100000000]"),
    (JOBS, _job(timeout_seconds=False), "timeout_seconds", "expected a number"),
    (JOBS, _job(kill_grace_seconds=-1), "kill_grace_seconds", "must be in [0, 3600]"),
    (JOBS, _job(kill_grace_seconds=3600.5), "kill_grace_seconds", "must be in [0, 3600]"),
    (JOBS, _job(kill_grace_seconds="soon"), "kill_grace_seconds", "expected a number"),
    # network, run_at.
    (JOBS, _job(network="yes"), "network", "expected true or false"),
    (JOBS, _job(network=1), "network", "expected true or false"),
    (JOBS, _job(run_at="tomorrow"), "run_at", "expected an RFC 3339 timestamp"),
    (JOBS, _job(run_at="2030-01-01T00:00:00"), "run_at", "needs a time zone"),
    (JOBS, _job(run_at=1_900_000_000), "run_at", "expected an RFC 3339 timestamp"),
    # labels: migrations/0018's bounds.
    (JOBS, _job(labels=["a"]), "labels", "expected an object"),
    (JOBS, _job(labels={f"k{i}": 1 for i in range(65)}), "labels", "at most 64 labels, got 65"),
    (JOBS, _job(labels={"k" * 129: 1}), "labels", "1-128 bytes without control"),
    (JOBS, _job(labels={"a\tb": 1}), "labels", "without control characters"),
    (JOBS, _job(labels={"k": "v\0"}), "labels", "NUL"),
    (JOBS, _job(labels={"k": "v" * 8200}), "labels", "at most 8192 bytes as JSON"),
    # constraints: node label strings.
    (JOBS, _job(constraints={"zone": "a b"}), "constraints", "must match"),
    (JOBS, _job(constraints={"zone": 1}), "constraints", "must map to a string"),
    (JOBS, _job(constraints=["zone=a"]), "constraints", "expected an object"),
    (JOBS, _job(constraints={f"k{i}": "v" for i in range(33)}), "constraints", "at most 32"),
    # depends_on.
    (JOBS, _job(depends_on={"id": 1}), "depends_on", "expected an array"),
    (JOBS, _job(depends_on=["1"]), "depends_on", "0: expected an integer"),
    (JOBS, _job(depends_on=[0]), "depends_on", "must be in [1, 9223372036854775807]"),
    (JOBS, _job(depends_on=[2**63]), "depends_on", "must be in [1, 9223372036854775807]"),
    (JOBS, _job(depends_on=list(range(1, 1002))), "depends_on", "at most 1000 job ids: got 1001"),
    # array.
    (JOBS, _job(array=[0, 1]), "array", "expected an object"),
    (JOBS, _job(array={"start": 0}), "array", "start and end are required"),
    (JOBS, _job(array={"start": 0, "end": 1, "x": 1}), "array", "unknown keys ['x']"),
    (JOBS, _job(array={"start": 5, "end": 1}), "array", "start must be <= end"),
    (JOBS, _job(array={"start": -1, "end": 1}), "array", "start: must be in [0, 2147483647]"),
    (JOBS, _job(array={"start": 0, "end": 2**31}), "array", "end: must be in [0, 2147483647]"),
    (JOBS, _job(array={"start": 0, "end": 1, "max_running": 0}), "array", "max_running: must"),
    (JOBS, _job(array={"start": True, "end": 1}), "array", "start: expected an integer"),
    # Tenants.
    (TENANTS, {"name": "Bad Name"}, "name", "expected a tenant name"),
    (TENANTS, {"name": "a", "parent": "Bad"}, "parent", "expected a tenant name"),
    (TENANTS, {"name": "a", "cpu_limit": 0}, "cpu_limit", "must be in (0, 4096]"),
    (TENANTS, {"name": "a", "memory_limit_bytes": 1}, "memory_limit_bytes", "must be in"),
    (TENANTS, {"name": "a", "pids_limit": 0}, "pids_limit", "must be in [1, 4194304]"),
    (TENANTS, {"name": "a", "max_running_jobs": -1}, "max_running_jobs", "must be in [0, "),
    (TENANTS, {"name": "a", "max_running_jobs": 10**6 + 1}, "max_running_jobs", "must be in"),
    (TENANTS, {"name": "a", "weight": 0}, "weight", "must be in [1, 10000]: got 0"),
    (TENANTS, {"name": "a", "weight": 10001}, "weight", "must be in [1, 10000]"),
    (TENANTS, {"name": "a", "weight": None}, "weight", "expected an integer"),
    (TENANTS, {"name": "a", "io_read_bps": 0}, "io_read_bps", "must be in [1, "),
    (TENANTS, {"name": "a", "io_write_bps": 0}, "io_write_bps", "must be in [1, "),
    (TENANTS, {"name": "a", "output_limit_bytes": -1}, "output_limit_bytes", "must be in [0, "),
    # Schedules and their job template.
    (SCHEDULES, _schedule(name="Bad Name"), "name", "expected a schedule name"),
    (SCHEDULES, _schedule(tenant="Bad"), "tenant", "expected a tenant name"),
    (SCHEDULES, _schedule(cron="x" * 201), "cron", "at most 200 characters"),
    (SCHEDULES, _schedule(cron=5), "cron", "expected a string"),
    (SCHEDULES, _schedule(timezone="z" * 101), "timezone", "at most 100 characters"),
    (SCHEDULES, _schedule(timezone="UTC\0"), "timezone", "NUL"),
    (SCHEDULES, _schedule(overlap="maybe"), "overlap", "expected skip or queue"),
    (SCHEDULES, _schedule(enabled="yes"), "enabled", "expected true or false"),
    (SCHEDULES, _schedule(job=["true"]), "job", "expected an object"),
    (SCHEDULES, _schedule(job={}), "job", "argv: required"),
    (SCHEDULES, _template(memory_bytes=3), "job", "memory_bytes: must be in"),
    (SCHEDULES, _template(state="queued"), "job", "state: unknown field"),
    # Not a template's: the schedule's tenant, its due time, one-off dependencies.
    (SCHEDULES, _template(tenant="acme"), "job", "tenant: unknown field"),
    (SCHEDULES, _template(run_at="2030-01-01T00:00:00Z"), "job", "run_at: unknown field"),
    (SCHEDULES, _template(depends_on=[1]), "job", "depends_on: unknown field"),
    (SCHEDULES, _template(array={"start": 0, "end": 1}), "job", "array: unknown field"),
    # Budgets.
    (BUDGET, {"amount": True}, "amount", "a number, a decimal string or null"),
    (BUDGET, {"amount": [1]}, "amount", "a number, a decimal string or null"),
    (BUDGET, {"amount": -1}, "amount", "must be in [0, 1000000000000000]"),
    (BUDGET, {"amount": "1e16"}, "amount", "must be in [0, "),
    (BUDGET, {"amount": "0.00000000001"}, "amount", "more than 10 decimal places"),
    (BUDGET, {"amount": "lots"}, "amount", ""),
    (BUDGET, {"amount": 1, "currency": "usd"}, "currency", "3 capital letters"),
    (BUDGET, {"amount": 1, "currency": 840}, "currency", "3 capital letters"),
    (BUDGET, {"amount": 1, "period": "week"}, "period", "expected month or total"),
    (BUDGET, {"amount": 1, "action": "kill"}, "action", "expected hold or freeze"),
]


@pytest.mark.parametrize(("path", "body", "field", "message"), REFUSED)
async def test_a_wrong_body_is_a_422_naming_the_field_before_any_connection(
    client: httpx.AsyncClient, pool: _RefusingPool, path: str, body: Any, field: str, message: str
) -> None:
    response = await _send(client, path, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and message in problem["detail"], problem
    if field:
        assert problem["field"] == field, problem
        assert problem["errors"][0]["field"] == field
        assert problem["detail"].startswith(f"{field}: ")
    assert pool.asked == 0  # refused before a database connection was taken


async def test_every_wrong_field_is_listed(client: httpx.AsyncClient) -> None:
    problem = (await _send(client, JOBS, {"cpu": 0, "pids_max": "x", "surprise": 1})).json()
    assert {e["field"] for e in problem["errors"]} == {"argv", "cpu", "pids_max", "surprise"}


# Bodies at every edge that is allowed: they pass the checks and reach the (refusing) pool.
ACCEPTED: list[tuple[str, Any]] = [
    (JOBS, _job()),
    (
        JOBS,
        _job(
            tenant="a" * 63,
            name="n" * 200,
            env={"A": "1"},
            cwd="/srv",
            cpu="0.001",
            memory_bytes=lim.MEMORY_MIN,
            pids_max=lim.PIDS_MAX,
            timeout_seconds=10**8,
            priority=-1000,
            max_attempts=100,
            run_at="2030-01-01T00:00:00+02:00",
            labels={"team": {"nested": [1, "x"]}},
            image="base",
            network=True,
            io_read_bps=lim.IO_BPS_MAX,
            io_write_bps=1,
            output_limit_bytes=0,
            depends_on=list(range(1, 1001)),
            constraints={f"k{i}": "v" for i in range(32)},
            kill_grace_seconds=0,
        ),
    ),
    (JOBS, _job(cpu=4096, memory_bytes=lim.MEMORY_MAX, priority=1000, kill_grace_seconds=3600)),
    (JOBS, _job(timeout_seconds=None, image=None, io_read_bps=None, kill_grace_seconds=None)),
    (JOBS, _job(array={"start": 0, "end": lim.INT4_MAX, "max_running": None})),
    (TENANTS, {"name": "acme"}),
    (
        TENANTS,
        {
            "name": "a-b_c",
            "parent": None,
            "cpu_limit": 4096,
            "memory_limit_bytes": lim.MEMORY_MAX,
            "pids_limit": 1,
            "max_running_jobs": 0,
            "weight": 10000,
            "io_read_bps": None,
            "output_limit_bytes": lim.OUTPUT_LIMIT_MAX,
        },
    ),
    (SCHEDULES, _schedule(name="a.b", timezone="Europe/Paris", overlap="queue", enabled=False)),
    (SCHEDULES, _template(cpu="0.5", labels={"a": 1}, constraints={"zone": "a"})),
    (BUDGET, {"amount": None}),
    (BUDGET, {"amount": "12.5", "currency": "EUR", "period": "total", "action": "freeze"}),
    (BUDGET, {"amount": 1000000000000000}),
]


@pytest.mark.parametrize(("path", "body"), ACCEPTED)
async def test_a_right_body_gets_past_the_checks(
    client: httpx.AsyncClient, pool: _RefusingPool, path: str, body: Any
) -> None:
    response = await _send(client, path, body)
    assert response.status_code == REACHED_POOL, response.text
    assert pool.asked == 1


# What is not JSON text at all: 400 (or 413), never a 500, before any connection.
@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"argv": ["\\ud800"]}', 400, "unpaired UTF-16 surrogate"),
        (b'{"\\udfff": 1}', 400, "unpaired UTF-16 surrogate"),
        (b"[" * 70 + b"]" * 70, 400, "nested deeper than 64 levels"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
        (b'{"argv": ["x"], "cpu": 1e999999999}', 400, "exponent beyond"),
        (b'{"argv": ["x"], "cpu": NaN}', 400, "not valid JSON"),
        (b'{"argv": ["x"], "cpu": Infinity}', 400, "not valid JSON"),
        (b" " * (lim.MAX_BODY_BYTES + 1), 413, f"at most {lim.MAX_BODY_BYTES}"),
    ],
)
@pytest.mark.parametrize("path", [JOBS, TENANTS, SCHEDULES, BUDGET])
async def test_text_that_is_no_json_is_a_4xx(
    client: httpx.AsyncClient, pool: _RefusingPool, path: str, raw: bytes, status: int, message: str
) -> None:
    response = await _send(client, path, raw)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert pool.asked == 0


async def test_no_token_is_a_401_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    for path in (JOBS, TENANTS, SCHEDULES):
        response = await client.post(path, content=b"{")
        assert response.status_code == 401, (path, response.text)


# --- the document says what the checks do ----------------------------------------------------

_BODY_SCHEMAS = {JOBS: "JobCreate", TENANTS: "TenantCreate", SCHEDULES: "ScheduleCreate"}


def _property(path: str, field: str) -> dict[str, Any]:
    schemas = document()["components"]["schemas"]
    schema = schemas[_BODY_SCHEMAS.get(path, "BudgetSet")]["properties"][field]
    for branch in schema.get("anyOf", ()):
        if branch.get("type") != "null":
            return cast(dict[str, Any], branch)
    return cast(dict[str, Any], schema)


@pytest.mark.parametrize(
    ("path", "field", "low", "high", "exclusive_low"),
    [
        (JOBS, "cpu", 0, 4096, True),
        (JOBS, "memory_bytes", lim.MEMORY_MIN, lim.MEMORY_MAX, False),
        (JOBS, "pids_max", 1, lim.PIDS_MAX, False),
        (JOBS, "timeout_seconds", 0, 10**8, True),
        (JOBS, "priority", -1000, 1000, False),
        (JOBS, "max_attempts", 1, 100, False),
        (JOBS, "io_read_bps", 1, lim.IO_BPS_MAX, False),
        (JOBS, "output_limit_bytes", 0, lim.OUTPUT_LIMIT_MAX, False),
        (JOBS, "kill_grace_seconds", 0, 3600, False),
        (TENANTS, "cpu_limit", 0, 4096, True),
        (TENANTS, "weight", 1, 10000, False),
        (TENANTS, "max_running_jobs", 0, lim.MAX_RUNNING_JOBS_MAX, False),
    ],
)
async def test_the_document_states_the_bounds_the_server_checks(
    client: httpx.AsyncClient, path: str, field: str, low: int, high: int, exclusive_low: bool
) -> None:
    schema = _property(path, field)
    assert schema["maximum"] == high
    assert schema["exclusiveMinimum" if exclusive_low else "minimum"] == low
    base = _job() if path == JOBS else {"name": "acme"}
    past_low = low if exclusive_low else low - 1
    for value in (past_low, high + 1):
        refused = await _send(client, path, {**base, field: value})
        assert refused.status_code == 422, (field, value)
    for value in (high, low + 1 if exclusive_low else low):
        taken = await _send(client, path, {**base, field: value})
        assert taken.status_code == REACHED_POOL, (field, value, taken.text)


def test_the_document_has_every_body_field_and_no_other() -> None:
    schemas = document()["components"]["schemas"]
    for name in ("JobCreate", "JobTemplate", "TenantCreate", "ScheduleCreate", "BudgetSet"):
        assert schemas[name]["additionalProperties"] is False, name
    assert set(schemas["JobCreate"]["properties"]) - set(schemas["JobTemplate"]["properties"]) == {
        "tenant",
        "run_at",
        "depends_on",
        "array",
    }
    assert schemas["ScheduleCreate"]["properties"]["job"] == {
        "$ref": "#/components/schemas/JobTemplate"
    }
    assert schemas["JobCreate"]["required"] == ["argv"]
    assert schemas["JobCreate"]["properties"]["depends_on"]["maxItems"] == lim.MAX_DEPENDS_ON
    assert schemas["JobCreate"]["properties"]["labels"]["maxProperties"] == lim.LABEL_KEYS_MAX
    assert sorted(schemas["ScheduleCreate"]["required"]) == ["cron", "job", "name"]
    assert schemas["BudgetSet"]["required"] == ["amount"]
    number, text_form, _ = schemas["BudgetSet"]["properties"]["amount"]["anyOf"]
    assert number["maximum"] == float(budgets.MAX_AMOUNT)
    assert re.fullmatch(text_form["pattern"], "999999999999999.0123456789")
    assert not re.fullmatch(text_form["pattern"], "1000000000000000")
    assert not re.fullmatch(text_form["pattern"], "1.01234567891")
    text = json.dumps(document())
    assert '"gt"' not in text and '"le"' not in text  # only JSON Schema's own keywords
