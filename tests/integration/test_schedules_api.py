"""Schedules through the HTTP API (a live agent) and the CLI: create, list, read, pause,
resume, delete; clear refusals; a tenant's token confined to its own schedules."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import asyncpg
import httpx
import pytest

from scheduler.api.auth import create_token
from tests.conftest import AgentHandle
from tests.integration.test_api import ADMIN, is_problem

pytestmark = pytest.mark.anyio
NIGHTLY = {
    "name": "nightly",
    "cron": "30 2 * * *",
    "timezone": "Europe/Paris",
    "job": {"argv": ["sh", "-c", "echo backup"], "cpu": 0.5, "memory_bytes": 64 << 20},
}


@pytest.fixture
async def api(agent: AgentHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as client:
        yield client


async def test_create_read_list_pause_resume_delete(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/schedules", headers=ADMIN, json=NIGHTLY)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == "/v1/schedules/nightly?tenant=default"
    assert (created["tenant"], created["overlap"], created["enabled"]) == ("default", "skip", True)
    assert created["job"]["argv"] == ["sh", "-c", "echo backup"]
    # 02:30 in Paris is 00:30 or 01:30 UTC, and it is in the future.
    due = datetime.fromisoformat(created["next_run_at"])
    assert due > datetime.now(UTC) and due.minute == 30 and due.hour in (0, 1)
    one = await api.get("/v1/schedules/nightly", headers=ADMIN)
    assert one.json() == created
    listed = (await api.get("/v1/schedules", headers=ADMIN)).json()["items"]
    assert [s["name"] for s in listed] == ["nightly"]
    paused = (await api.post("/v1/schedules/nightly/pause", headers=ADMIN)).json()
    assert paused["enabled"] is False and paused["next_run_at"] is None
    resumed = (await api.post("/v1/schedules/nightly/resume", headers=ADMIN)).json()
    assert resumed["enabled"] is True and resumed["next_run_at"] == created["next_run_at"]
    is_problem(await api.post("/v1/schedules", headers=ADMIN, json=NIGHTLY), 409)
    r = await api.delete("/v1/schedules/nightly", headers=ADMIN)
    assert r.status_code == 204
    body = is_problem(await api.get("/v1/schedules/nightly", headers=ADMIN), 404)
    assert "no schedule named 'nightly'" in str(body["detail"])
    doc = (await api.get("/openapi.json")).json()
    assert {"/v1/schedules", "/v1/schedules/{name}", "/v1/schedules/{name}/pause"} <= set(
        doc["paths"]
    )


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"cron": "* * *"}, "cron", "cron must have 5 fields"),
        ({"cron": "0 25 * * *"}, "cron", "out of range"),
        ({"cron": "0 0 30 2 *"}, "cron", "is not valid"),
        ({"timezone": "Europe/Atlantis"}, "timezone", "unknown time zone 'Europe/Atlantis'"),
        ({"overlap": "maybe"}, "overlap", "expected skip or queue"),
        ({"name": "Bad Name"}, "name", "expected a schedule name"),
        ({"job": {"argv": []}}, "job", "argv: expected a non-empty array"),
        ({"job": {"argv": ["x"], "memory_bytes": 3}}, "job", "memory_bytes: must be in"),
        ({"job": {"argv": ["x"], "state": "succeeded"}}, "job", "state: unknown field"),
        ({"job": {"argv": ["x"], "run_at": "2030-01-01T00:00:00Z"}}, "job", "run_at: unknown"),
        ({"tenant": "no-such-tenant"}, "tenant", "unknown tenant 'no-such-tenant'"),
        ({"surprise": 1}, "surprise", "unknown field"),
    ],
)
async def test_bad_schedules_are_refused_with_a_clear_problem(
    api: httpx.AsyncClient, change: dict[str, object], field: str, message: str
) -> None:
    body = is_problem(
        await api.post("/v1/schedules", headers=ADMIN, json={**NIGHTLY, **change}), 422
    )
    assert message in str(body["detail"]), body
    errors: list[dict[str, str]] = body.get("errors") or [{}]  # type: ignore[assignment]
    assert body.get("field", errors[0].get("field")) == field, body
    assert (await api.get("/v1/schedules", headers=ADMIN)).json()["items"] == []


async def test_a_database_rule_of_the_template_is_a_422(api: httpx.AsyncClient) -> None:
    # The body validator lets this through; the database's job rules do not.
    bad = {**NIGHTLY, "job": {"argv": ["x"], "env": {"": "y"}}}
    body = is_problem(await api.post("/v1/schedules", headers=ADMIN, json=bad), 422)
    assert "job" in str(body["detail"])


async def test_a_tenant_token_sees_only_its_own_schedules(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    a, b = f"ha-{uuid.uuid4().hex[:6]}", f"hb-{uuid.uuid4().hex[:6]}"
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1), ($2)", a, b)
    _, token_a = await create_token(db, a)
    _, token_b = await create_token(db, b)
    as_a = {"Authorization": f"Bearer {token_a}"}
    as_b = {"Authorization": f"Bearer {token_b}"}
    r = await api.post("/v1/schedules", headers=as_a, json=NIGHTLY)
    assert r.status_code == 201, r.text
    assert r.json()["tenant"] == a
    is_problem(await api.post("/v1/schedules", headers=as_a, json={**NIGHTLY, "tenant": b}), 403)
    r = await api.post("/v1/schedules", headers=as_b, json=NIGHTLY)  # the same name: its own
    assert r.status_code == 201, r.text
    for method, path in (
        ("GET", f"/v1/schedules/nightly?tenant={a}"),
        ("POST", f"/v1/schedules/nightly/pause?tenant={a}"),
        ("POST", f"/v1/schedules/nightly/resume?tenant={a}"),
        ("DELETE", f"/v1/schedules/nightly?tenant={a}"),
    ):
        is_problem(await api.request(method, path, headers=as_b), 404)
    mine = (await api.get("/v1/schedules", headers=as_b)).json()["items"]
    assert [(s["tenant"], s["name"]) for s in mine] == [(b, "nightly")]
    assert (await api.get(f"/v1/schedules?tenant={a}", headers=as_b)).json()["items"] == []
    # a's schedule is untouched; the admin sees both.
    assert (await api.get(f"/v1/schedules/nightly?tenant={a}", headers=as_a)).json()["enabled"]
    every = (await api.get("/v1/schedules", headers=ADMIN)).json()["items"]
    assert {s["tenant"] for s in every} == {a, b}
    is_problem(await api.get("/v1/schedules"), 401)


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        # The URL before the action's arguments: everything after `--` is the command.
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "schedules",
            args[0],
            "--database-url",
            dsn,
            *args[1:],
        ],
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_add_list_pause_resume_rm(dsn: str, db: asyncpg.Connection) -> None:
    code, out, err = await cli(
        dsn, "add", "hourly", "--cron", "5 * * * *", "--timezone", "America/New_York",
        "--overlap", "queue", "--cpu", "0.25", "--memory", "64M", "--env", "A=B",
        "--", "sh", "-c", "echo $A",
    )  # fmt: skip
    assert code == 0, err
    assert "schedule hourly (tenant default) added; next due time: " in out
    row = await db.fetchrow("SELECT * FROM scheduler.schedules WHERE name = 'hourly'")
    assert row is not None
    assert row["job"] == {
        "argv": ["sh", "-c", "echo $A"],
        "cpu": "0.25",
        "memory_bytes": 64 << 20,
        "env": {"A": "B"},
    }
    assert (row["overlap"], row["timezone"], row["next_run_at"].minute) == (
        "queue",
        "America/New_York",
        5,
    )
    code, out, err = await cli(dsn, "list", "--json")
    assert code == 0, err
    assert [s["name"] for s in json.loads(out)] == ["hourly"]
    code, out, _ = await cli(dsn, "list")
    assert "hourly" in out and "5 * * * *" in out and "sh -c echo $A" in out
    code, out, err = await cli(dsn, "pause", "hourly")
    assert code == 0 and "paused" in out, err
    assert not await db.fetchval("SELECT enabled FROM scheduler.schedules")
    code, out, err = await cli(dsn, "resume", "hourly")
    assert code == 0 and "resumed" in out, err
    code, out, err = await cli(dsn, "rm", "hourly")
    assert code == 0 and "removed" in out, err
    assert await db.fetchval("SELECT count(*) FROM scheduler.schedules") == 0
    code, _, err = await cli(dsn, "rm", "hourly")
    assert code == 1 and "no schedule named 'hourly'" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--cron", "* * * * * *", "--", "true"], 1, "cron must have 5 fields"),
        (["--cron", "*/0 * * * *", "--", "true"], 1, "is not valid"),
        (["--cron", "* * * * *", "--timezone", "Nowhere/Land", "--", "true"], 1, "time zone"),
        (["--cron", "* * * * *", "--memory", "4096", "--", "true"], 1, "memory_bytes must be"),
        (["--cron", "* * * * *", "--cwd", "tmp", "--", "true"], 1, "cwd must be an absolute"),
        (["--cron", "* * * * *"], 2, "no command given"),
        (["--cron", "* * * * *", "echo", "hi"], 2, "need the command after --"),
        (["--", "true"], 2, "--cron is required"),
    ],
)
async def test_cli_refuses_bad_schedules(
    dsn: str, db: asyncpg.Connection, args: list[str], code: int, message: str
) -> None:
    got, _, err = await cli(dsn, "add", "bad", *args)
    assert (got, message in err) == (code, True), err
    assert await db.fetchval("SELECT count(*) FROM scheduler.schedules") == 0
