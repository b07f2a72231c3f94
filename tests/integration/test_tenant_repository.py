"""One implementation of tenants for the CLI and the HTTP API (issue 21 item 3): the API's
create, list and freeze go through scheduler/repos/tenants.py, and each refusal keeps its
HTTP answer. The app runs in-process against a real Postgres (no agent, no cgroups)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from scheduler.api.app import build_app
from scheduler.api.dbwait import ApiPool
from scheduler.api.deps import ApiDeps
from scheduler.db.pool import create_pool
from scheduler.errors import ControlRefused, TenantNotFound
from scheduler.repos import tenants

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer repo-admin-token"}


@pytest.fixture
async def api(dsn: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async def ready() -> list[str]:
        return []

    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        app = build_app(
            ApiDeps(
                pool=ApiPool(pool),
                admin_token="repo-admin-token",
                runs_dir=tmp_path,
                node="test-node",
                readiness=ready,
            )
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client
    finally:
        await pool.close()


async def test_api_and_repository_create_the_same_tenants(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    made = await tenants.add_tenant(db, "from-cli", weight=7)
    assert made["weight"] == 7
    # A name the repository made is taken for the API too: 409, nothing changed.
    r = await api.post("/v1/tenants", headers=ADMIN, json={"name": "from-cli", "weight": 3})
    assert r.status_code == 409, r.text
    assert "already exists" in r.json()["detail"]
    assert (await tenants.get_tenant(db, "from-cli"))["weight"] == 7

    r = await api.post("/v1/tenants", headers=ADMIN, json={"name": "child", "parent": "nope"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "parent"
    assert r.json()["detail"] == "parent tenant 'nope' does not exist"
    with pytest.raises(ControlRefused) as caught:
        await tenants.add_tenant(db, "child", parent="nope")
    assert isinstance(caught.value.__cause__, asyncpg.ForeignKeyViolationError)

    r = await api.post(
        "/v1/tenants", headers=ADMIN, json={"name": "from-api", "parent": "from-cli"}
    )
    assert r.status_code == 201, r.text
    assert (await tenants.get_tenant(db, "from-api"))["parent"] == "from-cli"


async def test_list_and_freeze_through_the_repository(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await tenants.add_tenant(db, "team")
    listed = (await api.get("/v1/tenants", headers=ADMIN)).json()["items"]
    assert "team" in [t["name"] for t in listed]
    # The API's list is the tenants' rows; the CLI's carries the job counts too.
    assert all("active_jobs" not in t for t in listed)
    counted = await tenants.list_tenants(db)
    assert {"active_jobs", "queued_jobs"} <= set(counted[0].keys())

    r = await api.post("/v1/tenants/team/freeze", headers=ADMIN)
    assert r.status_code == 200 and r.json()["frozen"] is True
    assert (await tenants.get_tenant(db, "team"))["frozen"] is True
    assert (await api.post("/v1/tenants/team/thaw", headers=ADMIN)).json()["frozen"] is False

    assert (await api.post("/v1/tenants/ghost/freeze", headers=ADMIN)).status_code == 404
    with pytest.raises(TenantNotFound):
        await tenants.set_tenant_frozen(db, "ghost", True)
