"""The HTTP API against a live agent: routes, problems, idempotency, auth and tenant scope."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import asyncpg
import httpx
import pytest

from scheduler.api.auth import create_token, revoke_token
from tests.conftest import AgentHandle, slow

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
async def api(agent: AgentHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as client:
        yield client


async def wait_final(api: httpx.AsyncClient, job_id: int) -> dict[str, object]:
    with anyio.fail_after(slow(30)):
        while True:
            job = (await api.get(f"/v1/jobs/{job_id}", headers=ADMIN)).json()
            if job["state"] in ("succeeded", "failed", "cancelled", "timed_out", "lost"):
                return dict(job)
            await anyio.sleep(0.05)


def is_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    return dict(body)


async def test_health_ready_and_openapi_are_public(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    doc = (await api.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert "/v1/jobs/{job_id}/cancel" in doc["paths"]
    is_problem(await api.get("/v1/nowhere", headers=ADMIN), 404)
    is_problem(await api.delete("/v1/jobs", headers=ADMIN), 405)


async def test_no_token_is_401_with_a_challenge(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/jobs")
    is_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    is_problem(await api.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401)
    is_problem(await api.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)


async def test_submit_run_read_logs_and_usage(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/jobs",
        headers=ADMIN,
        json={
            "argv": ["sh", "-c", "echo hi; echo err >&2"],
            "cpu": 0.5,
            "memory_bytes": 64 << 20,
            "labels": {"team": "x"},
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["tenant"], job["state"], job["cpu"]) == ("default", "queued", "0.5")
    done = await wait_final(api, job["id"])
    assert done["state"] == "succeeded"
    logs = await api.get(f"/v1/jobs/{job['id']}/logs", headers=ADMIN)
    assert logs.text == "hi\n"
    err = await api.get(f"/v1/jobs/{job['id']}/logs?stream=stderr", headers=ADMIN)
    assert err.text == "err\n"
    usage = (await api.get(f"/v1/jobs/{job['id']}/usage", headers=ADMIN)).json()
    assert [u["final"] for u in usage["items"]] == [True]
    assert usage["items"][0]["cpu_seconds"] == done["cpu_seconds"]


async def test_logs_stream_while_the_job_runs(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/jobs", headers=ADMIN, json={"argv": ["sh", "-c", "echo one; sleep 0.6; echo two"]}
    )
    job_id = r.json()["id"]
    with anyio.fail_after(slow(20)):
        while (await api.get(f"/v1/jobs/{job_id}", headers=ADMIN)).json()["state"] != "running":
            await anyio.sleep(0.02)
    chunks = []
    async with api.stream("GET", f"/v1/jobs/{job_id}/logs?follow=true", headers=ADMIN) as s:
        async for chunk in s.aiter_text():
            chunks.append(chunk)
    assert "".join(chunks) == "one\ntwo\n"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 422, None),
        (b'{"argv": "true"}', 422, "argv"),
        (b'{"argv": []}', 422, "argv"),
        (b'{"argv": ["true"], "cpu": "lots"}', 422, "cpu"),
        (b'{"argv": ["true"], "cpu": true}', 422, "cpu"),
        (b'{"argv": ["true"], "memory_bytes": -1}', 422, "memory_bytes"),
        (b'{"argv": ["true"], "colour": "blue"}', 422, "colour"),
        (b'{"argv": ["true"], "tenant": "../../etc"}', 422, "tenant"),
        (b'{"argv": ["true"], "tenant": "nosuch"}', 422, "tenant"),
        (b'{"argv": ["true"], "env": {"A": 1}}', 422, "env"),
        (b'{"argv": ["true"], "run_at": "tomorrow"}', 422, "run_at"),
        (b'{"argv": ["true"], "cpu": NaN}', 400, None),
        (b"{}", 422, "argv"),
    ],
)
async def test_bad_bodies_are_4xx_and_store_nothing(
    api: httpx.AsyncClient, db: asyncpg.Connection, body: bytes, status: int, field: str | None
) -> None:
    r = await api.post(
        "/v1/jobs", headers={**ADMIN, "content-type": "application/json"}, content=body
    )
    problem = is_problem(r, status)
    if field is not None:
        assert field in json.dumps(problem)
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs") == 0


async def test_idempotency_key(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    body = {"argv": ["true"], "name": "once"}
    first = await api.post("/v1/jobs", headers={**ADMIN, "Idempotency-Key": "k1"}, json=body)
    again = await api.post(
        "/v1/jobs",
        headers={**ADMIN, "Idempotency-Key": "k1"},
        json={"name": "once", "argv": ["true"]},
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = await api.post(
        "/v1/jobs", headers={**ADMIN, "Idempotency-Key": "k1"}, json={"argv": ["false"]}
    )
    assert "different body" in str(is_problem(other, 422)["detail"])
    ids: list[int] = []

    async def post() -> None:
        r = await api.post(
            "/v1/jobs",
            headers={**ADMIN, "Idempotency-Key": "burst"},
            json={"argv": ["true"], "name": "burst"},
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(post)
    assert len(set(ids)) == 1
    assert await db.fetchval("SELECT count(*) FROM scheduler.jobs WHERE name = 'burst'") == 1


async def test_cursor_pagination_covers_every_job_once(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'default'")
    await db.execute(
        "INSERT INTO scheduler.jobs (argv) SELECT ARRAY['true'] FROM generate_series(1, 7)"
    )
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/jobs", headers=ADMIN, params=params)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and len(set(seen)) == 7 and seen == sorted(seen, reverse=True)
    is_problem(await api.get("/v1/jobs?cursor=%%%", headers=ADMIN), 400)
    is_problem(await api.get("/v1/jobs?limit=0", headers=ADMIN), 400)
    is_problem(await api.get("/v1/jobs?state=bogus", headers=ADMIN), 400)
    # Steering a held job: cancel ends it at once, thaw of a finished job is a conflict.
    job_id = seen[0]
    cancelled = await api.post(f"/v1/jobs/{job_id}/cancel", headers=ADMIN)
    assert cancelled.json()["state"] == "cancelled"
    is_problem(await api.post(f"/v1/jobs/{job_id}/thaw", headers=ADMIN), 409)


async def test_auth_matrix(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    for name in ("team-a", "team-b"):
        r = await api.post("/v1/tenants", headers=ADMIN, json={"name": name})
        assert r.status_code == 201, r.text
    child = await api.post(
        "/v1/tenants", headers=ADMIN, json={"name": "team-a-ci", "parent": "team-a"}
    )
    assert child.status_code == 201
    is_problem(await api.post("/v1/tenants", headers=ADMIN, json={"name": "team-a"}), 409)
    is_problem(await api.post("/v1/tenants", headers=ADMIN, json={"name": "../x"}), 422)
    _, token_a = await create_token(db, "team-a")
    b_id, token_b = await create_token(db, "team-b")
    a = {"Authorization": f"Bearer {token_a}"}
    b = {"Authorization": f"Bearer {token_b}"}
    await db.execute("UPDATE scheduler.tenants SET frozen = true")  # hold every job queued
    # Not as an operator hold, so that a tenant can thaw itself below (operator holds:
    # tests/attacks/test_sql_control.py).
    await db.execute("UPDATE scheduler.tenants SET operator_hold = false")

    job_a = (await api.post("/v1/jobs", headers=a, json={"argv": ["true"]})).json()
    assert job_a["tenant"] == "team-a"
    job_child = (
        await api.post("/v1/jobs", headers=a, json={"argv": ["true"], "tenant": "team-a-ci"})
    ).json()
    assert job_child["tenant"] == "team-a-ci"
    is_problem(
        await api.post("/v1/jobs", headers=b, json={"argv": ["true"], "tenant": "team-a"}), 403
    )
    job_b = (await api.post("/v1/jobs", headers=b, json={"argv": ["true"]})).json()

    for route in ("", "/usage", "/logs"):
        assert (await api.get(f"/v1/jobs/{job_a['id']}{route}", headers=a)).status_code == 200
        is_problem(await api.get(f"/v1/jobs/{job_a['id']}{route}", headers=b), 404)
        assert (await api.get(f"/v1/jobs/{job_a['id']}{route}", headers=ADMIN)).status_code == 200
    for verb in ("freeze", "thaw", "cancel"):
        is_problem(await api.post(f"/v1/jobs/{job_a['id']}/{verb}", headers=b), 404)
    listed_b = [j["id"] for j in (await api.get("/v1/jobs", headers=b)).json()["items"]]
    assert listed_b == [job_b["id"]]
    listed_a = {j["id"] for j in (await api.get("/v1/jobs", headers=a)).json()["items"]}
    assert listed_a == {job_a["id"], job_child["id"]}
    assert len((await api.get("/v1/jobs", headers=ADMIN)).json()["items"]) == 3
    tenants_b = [t["name"] for t in (await api.get("/v1/tenants", headers=b)).json()["items"]]
    assert tenants_b == ["team-b"]
    is_problem(await api.post("/v1/tenants/team-a/freeze", headers=b), 404)
    assert (await api.post("/v1/tenants/team-b/thaw", headers=b)).json()["frozen"] is False
    is_problem(await api.post("/v1/tenants", headers=b, json={"name": "rogue"}), 403)
    assert (
        await api.post("/v1/tenants", headers=b, json={"name": "team-b-x", "parent": "team-b"})
    ).status_code == 201

    assert await revoke_token(db, b_id)
    is_problem(await api.get("/v1/jobs", headers=b), 401)


async def test_labels_keep_any_json_numbers(api: httpx.AsyncClient) -> None:
    body = b'{"argv": ["true"], "labels": {"ratio": 1.25, "big": 1e300, "n": 3, "deep": [0.5]}}'
    r = await api.post(
        "/v1/jobs", headers={**ADMIN, "content-type": "application/json"}, content=body
    )
    assert r.status_code == 201, r.text
    # Exact: 1e300 comes back as the integer it denotes, not a rounded float.
    assert r.json()["labels"] == {"ratio": 1.25, "big": 10**300, "n": 3, "deep": [0.5]}


async def test_billing_export_over_http(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO scheduler.rates (resource, price, currency) VALUES"
        " ('cpu_second', 0.0001, 'USD'), ('memory_gib_hour', 0.01, 'USD'), ('io_gib', 0.02, 'USD')"
    )
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('payer')")
    r = await api.post("/v1/jobs", headers=ADMIN, json={"argv": ["true"], "tenant": "payer"})
    done = await wait_final(api, r.json()["id"])
    assert done["state"] == "succeeded"
    window = {"from": "2000-01-01", "to": "2100-01-01"}
    first = await api.get("/v1/billing/export", headers=ADMIN, params={**window, "format": "focus"})
    again = await api.get("/v1/billing/export", headers=ADMIN, params={**window, "format": "focus"})
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("text/csv")
    assert first.content == again.content
    assert "BilledCost" in first.text.splitlines()[0]
    assert "payer" in first.text
    as_json = await api.get(
        "/v1/billing/export", headers=ADMIN, params={**window, "format": "json"}
    )
    assert as_json.status_code == 200
    json.loads(as_json.text)
    _, token = await create_token(db, "payer")
    mine = await api.get(
        "/v1/billing/export", headers={"Authorization": f"Bearer {token}"}, params=window
    )
    assert mine.status_code == 200 and "payer" in mine.text
    is_problem(
        await api.get(
            "/v1/billing/export",
            headers={"Authorization": f"Bearer {token}"},
            params={**window, "tenant": "default"},
        ),
        404,
    )
    is_problem(
        await api.get("/v1/billing/export", headers=ADMIN, params={"from": "x", "to": "y"}), 400
    )
    is_problem(
        await api.get(
            "/v1/billing/export", headers=ADMIN, params={"from": "2001-01-01", "to": "2000-01-01"}
        ),
        422,
    )
