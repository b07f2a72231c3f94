"""Job arrays (issue 18 item 2): one submission, N members sharing array_id, each with its own
SCHEDULER_ARRAY_INDEX, at most max_running of them running at once; listed, cancelled and
frozen as a whole; made in SQL by a tenant role too."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from scheduler.db.pool import connect
from scheduler.sqlaccess import grant_sql
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import output, wait_final
from tests.integration.test_sql_access import as_role

pytestmark = pytest.mark.anyio

SCHEDULER = str(Path(sys.executable).parent / "scheduler")
ADMIN = {"Authorization": "Bearer test-admin-token"}


async def cli(agent: AgentHandle, *argv: str) -> str:
    """Run the real ``scheduler`` command against the agent's database; its stdout."""
    env = {**os.environ, "SCHEDULER_DATABASE_URL": str(agent.settings.db.url)}
    result = await anyio.run_process([SCHEDULER, *argv], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def running_members(db: asyncpg.Connection, array_id: int) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM scheduler.jobs"
            " WHERE array_id = $1 AND state IN ('running', 'frozen')",
            array_id,
        )
    )


@pytest.mark.timeout(600)
async def test_array_of_200_never_runs_more_than_max_running(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    # The agent would run 64 at once (max_running of the test agent): the array's cap is 5.
    script = 'echo "$SCHEDULER_ARRAY_INDEX"; sleep 0.5'
    out = await cli(
        agent, "submit", "--json", "--cpu", "0.1", "--array", "0-199%5", "--", "sh", "-c", script
    )
    submitted = json.loads(out)
    array_id = submitted["array_id"]
    assert [m["array_index"] for m in submitted["items"]] == list(range(200))
    assert sum(not m["array_waiting"] for m in submitted["items"]) == 5
    ids = [m["id"] for m in submitted["items"]]
    most, samples = 0, 0
    with anyio.fail_after(slow(400)):
        while True:
            # Sampled from the table while the array runs: never more than 5 at once.
            now = await running_members(db, array_id)
            most, samples = max(most, now), samples + 1
            assert now <= 5, f"{now} members of the array running at once"
            left = await db.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE array_id = $1"
                " AND state IN ('queued', 'running', 'frozen')",
                array_id,
            )
            if left == 0:
                break
            await anyio.sleep(0.01)
    assert most == 5, f"at most {most} ran at once: the cap should be used, not undershot"
    rows = await wait_final(db, ids)
    assert {r["state"] for r in rows} == {"succeeded"}
    for row in rows:
        # Each member saw its own index (and the array's id) in its environment.
        assert output(agent, row["id"]).strip() == str(row["array_index"]), row["id"]
        assert row["env"] == {}
    listed = json.loads(
        await cli(agent, "jobs", "--json", "--array", str(array_id), "--limit", "500")
    )
    assert sorted(j["id"] for j in listed) == sorted(ids)


async def test_cancel_and_freeze_a_whole_array_over_http(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    base = f"http://{agent.ready.http}"
    async with httpx.AsyncClient(base_url=base, headers=ADMIN, timeout=30) as client:
        body = {
            "argv": ["sleep", "300"],
            "cpu": 0.1,
            "array": {"start": 3, "end": 12, "max_running": 2},
        }
        made = await client.post("/v1/jobs", json=body)
        assert made.status_code == 201, made.text
        array_id = made.json()["array_id"]
        items = made.json()["items"]
        assert [i["array_index"] for i in items] == list(range(3, 13))
        assert [i["array_waiting"] for i in items] == [False] * 2 + [True] * 8
        with anyio.fail_after(slow(30)):
            while await running_members(db, array_id) < 2:
                await anyio.sleep(0.05)
        listed = await client.get("/v1/jobs", params={"array": array_id, "limit": 50})
        assert listed.status_code == 200
        assert sorted(j["id"] for j in listed.json()["items"]) == sorted(i["id"] for i in items)
        frozen = await client.post(f"/v1/arrays/{array_id}/freeze")
        assert frozen.status_code == 200, frozen.text
        assert len(frozen.json()["changed"]) == 10
        with anyio.fail_after(slow(30)):
            while (
                await db.fetchval(
                    "SELECT count(*) FROM scheduler.jobs WHERE array_id = $1 AND state = 'frozen'",
                    array_id,
                )
                < 2
            ):
                await anyio.sleep(0.05)
        cancelled = await client.post(f"/v1/arrays/{array_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        rows = await wait_final(db, [i["id"] for i in items])
        assert {r["state"] for r in rows} == {"cancelled"}
        # Only the two that held the cap ever started: no gated member ran in between.
        assert sorted(r["attempts"] for r in rows) == [0] * 8 + [1] * 2
        missing = await client.post("/v1/arrays/999999/cancel")
        assert missing.status_code == 404
        too_big = await client.post(
            "/v1/jobs", json={"argv": ["true"], "array": {"start": 0, "end": 10_000}}
        )
        assert too_big.status_code == 422 and "max_array_size" in too_big.text
        keyed = {"argv": ["true"], "cpu": 0.1, "array": {"start": 0, "end": 2}}
        headers = {"Idempotency-Key": "nightly-1"}
        first = await client.post("/v1/jobs", json=keyed, headers=headers)
        again = await client.post("/v1/jobs", json=keyed, headers=headers)
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json()["array_id"] == first.json()["array_id"]
        assert [j["id"] for j in again.json()["items"]] == [j["id"] for j in first.json()["items"]]
        other = await client.post(
            "/v1/jobs", json={**keyed, "array": {"start": 0, "end": 3}}, headers=headers
        )
        assert other.status_code == 422
        backwards = await client.post(
            "/v1/jobs", json={"argv": ["true"], "array": {"start": 5, "end": 1}}
        )
        assert backwards.status_code == 422


async def test_cli_cancels_a_whole_array(db: asyncpg.Connection, agent: AgentHandle) -> None:
    array_id = int(
        await cli(agent, "submit", "--cpu", "0.1", "--array", "0-5%3", "--", "sleep", "300")
    )
    with anyio.fail_after(slow(30)):
        while await running_members(db, array_id) < 3:
            await anyio.sleep(0.05)
    await cli(agent, "cancel", "--array", str(array_id))
    ids = [
        r["id"]
        for r in await db.fetch("SELECT id FROM scheduler.jobs WHERE array_id = $1", array_id)
    ]
    rows = await wait_final(db, ids)
    assert len(rows) == 6 and {r["state"] for r in rows} == {"cancelled"}


async def test_a_tenant_role_makes_an_array_in_sql_and_its_cancel_ungates_the_next(
    db: asyncpg.Connection, dsn: str
) -> None:
    tenant = f"arr-{uuid.uuid4().hex[:6]}"
    await db.execute("INSERT INTO scheduler.tenants (name, frozen) VALUES ($1, true)", tenant)
    role, password = await grant_sql(db, tenant)
    conn = await connect(as_role(dsn, role, password))
    try:
        # The documented SQL: members 0..3 of a new array, the first 2 ungated.
        await conn.execute(
            "INSERT INTO scheduler.jobs (tenant, argv, array_id, array_index, array_waiting)"
            " SELECT $1, ARRAY['true'], a.id, i, i >= 2"
            " FROM (SELECT nextval('scheduler.job_array_ids') AS id) a,"
            " generate_series(0, 3) i",
            tenant,
        )

        async def gated() -> list[int]:
            rows = await conn.fetch(
                "SELECT array_index FROM scheduler.jobs WHERE tenant = $1 AND array_waiting"
                " AND state = 'queued' ORDER BY array_index",
                tenant,
            )
            return [r["array_index"] for r in rows]

        assert await gated() == [2, 3]
        # Cancelling an ungated queued member (a final state) lets the next one in.
        await conn.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled'"
            " WHERE tenant = $1 AND array_index = 0",
            tenant,
        )
        assert await gated() == [3]
        # A gated member cancelled frees no place.
        await conn.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled'"
            " WHERE tenant = $1 AND array_index = 3",
            tenant,
        )
        assert await gated() == []
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO scheduler.jobs (tenant, argv, array_id) VALUES ($1, ARRAY['true'], 1)",
                tenant,
            )
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_two_agents_share_an_array_and_its_cap(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
) -> None:
    """Members end on two nodes at once: each end ungates a different member (SKIP LOCKED),
    none is lost and the cap holds across the nodes."""
    async with anyio.create_task_group() as tg:
        agents = [
            await start_agent(
                tg, agent_settings(dsn, state_dir / name, root, node_name=name, node_cpu=8.0)
            )
            for name, root in (("a", cgroup_root), ("b", peer_cgroup_roots[0]))
        ]
        out = await cli(
            agents[0], "submit", "--json", "--cpu", "0.1", "--array", "0-59%6", "--", "sleep", "0.3"
        )
        array_id = json.loads(out)["array_id"]
        most = 0
        with anyio.fail_after(slow(300)):
            while await db.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE array_id = $1"
                " AND state IN ('queued', 'running', 'frozen')",
                array_id,
            ):
                now = await running_members(db, array_id)
                assert now <= 6
                most = max(most, now)
                await anyio.sleep(0.01)
        rows = await db.fetch(
            "SELECT state, node FROM scheduler.jobs WHERE array_id = $1", array_id
        )
        assert len(rows) == 60 and {r["state"] for r in rows} == {"succeeded"}
        assert {r["node"] for r in rows} == {"a", "b"}
        assert most == 6
        tg.cancel_scope.cancel()
