"""Dependencies and finished-job notifications on a real agent (migrations/0014): a diamond
with one failure, the cascade down a chain, refusals through HTTP, HTTP ?wait= answered at
the job's end without a database connection per waiter, ``submit --after --wait``, and what
a tenant's LISTEN on scheduler_job_done learns of another tenant."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from scheduler.api.auth import create_token
from scheduler.db.pool import connect
from scheduler.sqlaccess import grant_sql
from tests.attacks.test_sql_control import as_role
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_cli_agent import cli

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.postgres]
ADMIN = {"Authorization": "Bearer test-admin-token"}
FINAL = ("succeeded", "failed", "cancelled", "timed_out", "lost")


@pytest.fixture
async def api(agent: AgentHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=120) as client:
        yield client


async def post(
    api: httpx.AsyncClient, argv: list[str], after: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    headers = extra.pop("headers", ADMIN)
    body = {"argv": argv, "cpu": 0.1, "memory_bytes": 64 << 20, **extra}
    if after is not None:
        body["depends_on"] = after
    r = await api.post("/v1/jobs", headers=headers, json=body)
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


async def final(api: httpx.AsyncClient, job_id: int, headers: dict[str, str] = ADMIN) -> Any:
    with anyio.fail_after(slow(90)):
        while True:
            job = (await api.get(f"/v1/jobs/{job_id}?wait=30", headers=headers)).json()
            if job["state"] in FINAL:
                return job


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_diamond_with_one_failure_and_the_chain_below(api: httpx.AsyncClient) -> None:
    a = await post(api, ["sleep", "1"])
    b = await post(api, ["true"], [a["id"]])
    c = await post(api, ["sh", "-c", "exit 4"], [a["id"]])
    d = await post(api, ["true"], [b["id"], c["id"]])
    e = await post(api, ["true"], [d["id"]])
    f = await post(api, ["true"], [e["id"]])
    assert (b["deps_waiting"], d["deps_waiting"], d["depends_on"]) == (1, 2, [b["id"], c["id"]])
    done = {j["id"]: await final(api, j["id"]) for j in (a, b, c, d, e, f)}
    assert done[a["id"]]["state"] == "succeeded"
    # B and C ran, and only after A had succeeded.
    for j in (b, c):
        assert at(done[j["id"]]["started_at"]) >= at(done[a["id"]]["finished_at"])
    assert (done[b["id"]]["state"], done[c["id"]]["state"]) == ("succeeded", "failed")
    # D never started, and says which dependency ended it; so on down the chain.
    assert (done[d["id"]]["state"], done[d["id"]]["attempts"]) == ("cancelled", 0)
    assert done[d["id"]]["error"] == f"dependency {c['id']} failed"
    assert done[e["id"]]["error"] == f"dependency {d['id']} cancelled"
    assert done[f["id"]]["error"] == f"dependency {e['id']} cancelled"
    assert done[f["id"]]["attempts"] == 0


async def test_cancelling_a_queued_dependency_cancels_its_dependents(
    api: httpx.AsyncClient,
) -> None:
    gate = await post(api, ["sleep", "30"])
    held = await post(api, ["true"], [gate["id"]])
    below = await post(api, ["true"], [held["id"]])
    r = await api.post(f"/v1/jobs/{held['id']}/cancel", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    job = (await api.get(f"/v1/jobs/{below['id']}", headers=ADMIN)).json()
    assert (job["state"], job["error"]) == ("cancelled", f"dependency {held['id']} cancelled")
    await api.post(f"/v1/jobs/{gate['id']}/cancel", headers=ADMIN)


async def test_refusals_through_http(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    for name in ("alpha", "beta"):
        assert (await api.post("/v1/tenants", headers=ADMIN, json={"name": name})).is_success
    _, token = await create_token(db, "alpha")
    alpha = {"Authorization": f"Bearer {token}"}
    theirs = await post(api, ["true"], tenant="beta")
    mine = await post(api, ["true"], headers=alpha)

    async def refused(after: Any, status: int = 422) -> str:
        r = await api.post("/v1/jobs", headers=alpha, json={"argv": ["true"], "depends_on": after})
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        detail: str = r.json()["detail"]
        return detail

    foreign = await refused([theirs["id"]])
    unknown = await refused([theirs["id"] + 10_000])
    assert foreign == f"depends_on: {theirs['id']} is not a job of tenant 'alpha'"
    assert unknown == f"depends_on: {theirs['id'] + 10_000} is not a job of tenant 'alpha'"
    assert await refused([mine["id"], mine["id"]]) == (
        f"depends_on lists job {mine['id']} more than once"
    )
    assert "at most 1000 job ids" in await refused(list(range(1, 100_001)))
    assert "expected an integer" in await refused(["1"])
    assert "expected an array" in await refused({"id": 1})
    # The next id is the job's own: refused before it exists. (A refused insert also takes
    # an id from the sequence, so take the next one fresh.)
    last = await post(api, ["true"], headers=alpha)
    assert (
        await refused([last["id"] + 1])
        == f"depends_on: job {last['id'] + 1} cannot depend on itself"
    )


async def test_http_wait_answers_at_the_end_and_holds_no_database_connection(
    dsn: str, state_dir: Path, cgroup_root: str
) -> None:
    # One API database connection and room for two waiters (a quarter of 8 connections).
    settings = agent_settings(
        dsn, state_dir, cgroup_root, api_db_connections=1, http_max_connections=8
    )
    async with anyio.create_task_group() as tg:
        handle = await start_agent(tg, settings)
        async with httpx.AsyncClient(base_url=f"http://{handle.ready.http}", timeout=120) as api:
            first = await post(api, ["sleep", "60"])
            second = await post(api, ["sleep", "60"])
            answers: dict[int, tuple[float, dict[str, Any]]] = {}

            async def waiting(job_id: int) -> None:
                while True:
                    r = await api.get(f"/v1/jobs/{job_id}?wait=60", headers=ADMIN)
                    assert r.status_code == 200, r.text
                    # The probe below may hold a place for a moment: ask again then.
                    if r.headers.get("scheduler-wait") != "unavailable":
                        break
                    await anyio.sleep(0.05)
                answers[job_id] = (time.monotonic(), r.json())

            async with anyio.create_task_group() as waits:
                waits.start_soon(waiting, first["id"])
                waits.start_soon(waiting, second["id"])
                # Once both wait, a third is answered at once with the job as it is...
                with anyio.fail_after(slow(60)):
                    while True:
                        probe = await api.get(f"/v1/jobs/{first['id']}?wait=1", headers=ADMIN)
                        if probe.headers.get("scheduler-wait") == "unavailable":
                            break
                assert probe.json()["state"] in ("queued", "running")
                # ...and the API's only database connection still serves a plain read.
                start = time.monotonic()
                plain = await api.get(f"/v1/jobs/{first['id']}", headers=ADMIN)
                assert plain.status_code == 200
                assert time.monotonic() - start < slow(5)
                # The end of the first wakes its waiter then, not 60 s after it asked.
                cancelled_at = time.monotonic()
                await api.post(f"/v1/jobs/{first['id']}/cancel", headers=ADMIN)
                with anyio.fail_after(slow(30)):
                    while first["id"] not in answers:
                        await anyio.sleep(0.05)
                woke, job = answers[first["id"]]
                assert job["state"] == "cancelled" and woke - cancelled_at < slow(15)
                # A job that ends on its own: answered at its end.
                short = await post(api, ["sleep", "2"])
                start = time.monotonic()
                r = await api.get(f"/v1/jobs/{short['id']}?wait=60", headers=ADMIN)
                assert r.json()["state"] == "succeeded"
                assert 1.5 <= time.monotonic() - start < slow(30)
                # A job that stays queued (behind the second): answered after its wait.
                gated = await post(api, ["true"], [second["id"]])
                start = time.monotonic()
                r = await api.get(f"/v1/jobs/{gated['id']}?wait=2", headers=ADMIN)
                assert r.json()["state"] == "queued" and time.monotonic() - start >= 2
                await api.post(f"/v1/jobs/{second['id']}/cancel", headers=ADMIN)
            assert answers[second["id"]][1]["state"] == "cancelled"
            # Capped at 60 s; not a number: 400.
            is_bad = await api.get(f"/v1/jobs/{gated['id']}?wait=abc", headers=ADMIN)
            assert is_bad.status_code == 400
            over = await api.get(f"/v1/jobs/{gated['id']}?wait=99999", headers=ADMIN)
            assert over.json()["state"] == "cancelled"
        tg.cancel_scope.cancel()


async def test_submit_after_and_wait_exit_with_the_jobs_outcome(agent: AgentHandle) -> None:
    first = await cli(agent, "submit", "--", "sleep", "1")
    assert first.returncode == 0, first
    first_id = first.stdout.strip()
    after = await cli(
        agent, "submit", "--after", first_id, "--wait", "--quiet", "--", "sh", "-c", "exit 3"
    )
    # It ran (after the first succeeded) and exits with its own code.
    assert after.returncode == 3, after
    failing = await cli(agent, "submit", "--", "sh", "-c", "sleep 2; exit 1")
    assert failing.returncode == 0, failing
    doomed = await cli(
        agent, "submit", "--after", failing.stdout.strip(), "--wait", "--quiet", "--", "true"
    )
    # Cancelled without an exit code of its own: 1, and the reason on stderr.
    assert doomed.returncode == 1, doomed
    assert f"dependency {failing.stdout.strip()} failed" in doomed.stderr
    shown = await cli(agent, "show", doomed.stderr.split()[0])
    assert f"[{failing.stdout.strip()}]" in shown.stdout
    bad = await cli(agent, "submit", "--after", "12,x", "--", "true")
    assert bad.returncode == 2 and "job id" in bad.stderr


async def test_a_tenant_listener_learns_no_other_tenants_outcome(
    agent: AgentHandle, db: asyncpg.Connection, dsn: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('alpha'), ('beta')")
    role, password = await grant_sql(db, "alpha")
    alpha = await connect(as_role(dsn, role, password))
    heard: list[str] = []
    try:
        await alpha.add_listener(
            "scheduler_job_done", lambda _c, _p, _ch, payload: heard.append(payload)
        )
        insert = (
            "INSERT INTO scheduler.jobs (tenant, argv, cpu, memory_bytes)"
            " VALUES ($1, ARRAY['sh', '-c', 'exit 5'], 0.1, 67108864) RETURNING id"
        )
        beta_job = await db.fetchval(insert, "beta")
        alpha_job = await alpha.fetchval(insert, "alpha")
        with anyio.fail_after(slow(60)):
            while not {str(beta_job), str(alpha_job)} <= set(heard):
                await anyio.sleep(0.05)
        # The payload is the id alone: no tenant, no state.
        assert set(heard) == {str(beta_job), str(alpha_job)}
        # What alpha can read of each: its own job's outcome, nothing of beta's.
        query = "SELECT tenant, state FROM scheduler.jobs WHERE id = $1"
        assert tuple(await alpha.fetchrow(query, alpha_job) or ()) == ("alpha", "failed")
        assert await alpha.fetchrow(query, beta_job) is None
    finally:
        await alpha.close()
