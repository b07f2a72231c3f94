"""The status page in a real headless Chromium (Debian's package) with JavaScript off, against
a live agent: sign in through the form (the token lands in an HttpOnly, SameSite=Strict
cookie), the overview and job pages show the agent's jobs, a tenant sees only its own, hostile
job names stay text. A screenshot per page is kept under build/status-page/ (ignored by git)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from scheduler.api.auth import create_token
from tests.browser import Browser, chromium_binary
from tests.conftest import AgentHandle, slow

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.postgres]
SHOTS = Path(__file__).resolve().parents[2] / "build" / "status-page"
HOSTILE = "acme-<script>alert(1)</script>\x1b[2J"


@pytest.fixture
def browsers() -> Iterator[list[Browser]]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium (make system-deps installs Debian's package)")
    opened: list[Browser] = []
    yield opened
    for browser in opened:
        browser.close()


async def _wait_state(db: asyncpg.Connection, job: int, states: tuple[str, ...]) -> None:
    with anyio.fail_after(slow(60)):
        while (
            await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job) not in states
        ):
            await anyio.sleep(0.1)


async def _insert(
    db: asyncpg.Connection, tenant: str, name: str, argv: list[str], **extra: object
) -> int:
    extra = {"cpu": Decimal("0.1"), **extra}  # a 2-core test host runs them all at once
    columns = ["tenant", "name", "argv", *extra]
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return int(
        await db.fetchval(
            f"INSERT INTO scheduler.jobs ({', '.join(columns)}) VALUES ({values}) RETURNING id",
            tenant,
            name,
            argv,
            *extra.values(),
        )
    )


async def test_status_pages_in_a_browser(
    agent: AgentHandle, db: asyncpg.Connection, browsers: list[Browser]
) -> None:
    binary = chromium_binary()
    assert binary is not None
    base = f"http://{agent.ready.http}"
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme'), ('beta')")
    _, acme_token = await create_token(db, "acme")
    await db.execute(
        "INSERT INTO scheduler.rates (resource, price) VALUES ('cpu_second', 0.5),"
        " ('memory_gib_hour', 0.25), ('io_gib', 0.01)"
    )
    running = await _insert(db, "acme", HOSTILE, ["sh", "-c", "echo from-acme-job; sleep 60"])
    failed = await _insert(db, "acme", "acme-broken", ["/no/such/binary"])
    later = await _insert(
        db, "acme", "acme-later", ["true"], run_at=datetime.now(UTC) + timedelta(hours=2)
    )
    secret = await _insert(
        db, "beta", "beta-secret-job", ["sh", "-c", "echo beta-output; sleep 60"]
    )
    await _wait_state(db, running, ("running",))
    await _wait_state(db, failed, ("failed",))
    await _wait_state(db, secret, ("running",))
    with anyio.fail_after(slow(60)):  # a usage row for the running job (sample_interval)
        while not await db.fetchval(
            "SELECT count(*) FROM scheduler.usage WHERE job_id = $1", running
        ):
            await anyio.sleep(0.2)

    def admin_session() -> None:
        admin = Browser(binary)
        browsers.append(admin)
        admin.open(f"{base}/")  # not signed in: the login form
        assert admin.count("input[name=token]") == 1
        admin.screenshot(SHOTS / "login.png")
        admin.fill_and_submit("input[name=token]", "wrong-token")
        assert "unknown or revoked token" in admin.text()
        admin.fill_and_submit("input[name=token]", "test-admin-token")
        cookie = next(c for c in admin.cookies() if c["name"] == "scheduler_token")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        page = admin.text()
        for seen in (
            "Nodes",
            "test-node",
            "acme",
            "beta-secret-job",
            "acme-broken",
            "exec: /no/such/binary",
            "acme-later",
            "(run_at)",
            "Recent failures",
        ):
            assert seen in page, seen
        assert '<meta http-equiv="refresh"' in admin.html()
        # The hostile name is text: no script element, its escape sequence made visible.
        assert admin.count("script") == 0
        assert "acme-&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J" in admin.html()
        admin.screenshot(SHOTS / "overview-admin.png")
        admin.open(f"{base}/jobs/{running}")
        job_page = admin.text()
        assert "from-acme-job" in job_page and "Usage" in job_page and "running" in job_page
        assert admin.count("script") == 0
        admin.screenshot(SHOTS / "job-admin.png")

    def tenant_session() -> None:
        acme = Browser(binary)
        browsers.append(acme)
        acme.open(f"{base}/login")
        acme.fill_and_submit("input[name=token]", acme_token)
        page = acme.text()
        assert "tenant acme" in page and "acme-broken" in page
        assert "beta" not in page  # neither beta's jobs nor the tenant itself
        assert "Nodes" not in page  # nodes are the operator's
        acme.screenshot(SHOTS / "overview-tenant.png")
        acme.open(f"{base}/jobs/{secret}")
        assert "No job" in acme.text() and "beta-output" not in acme.html()
        acme.screenshot(SHOTS / "job-other-tenant.png")
        acme.open(f"{base}/jobs/{failed}")
        assert "acme-broken" in acme.text()
        acme.screenshot(SHOTS / "job-tenant.png")

    await anyio.to_thread.run_sync(admin_session)
    await anyio.to_thread.run_sync(tenant_session)
    for name in (
        "login",
        "overview-admin",
        "job-admin",
        "overview-tenant",
        "job-other-tenant",
        "job-tenant",
    ):
        assert (SHOTS / f"{name}.png").stat().st_size > 1000
    assert later  # queued with a reason, shown above


async def test_status_page_refuses_without_a_valid_token(agent: AgentHandle) -> None:
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=30) as web:
        r = await web.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        r = await web.get("/", headers={"Cookie": "scheduler_token=forged"})
        assert r.status_code == 303
        r = await web.get("/jobs/1", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 303
        # A form posted from another site may not sign a browser in.
        r = await web.post(
            "/login",
            content="token=test-admin-token",
            headers={
                "Origin": "http://evil.example",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = await web.post("/login", content="token=" + "x" * 10000)
        assert r.status_code == 413
        r = await web.get("/", headers={"Authorization": "Bearer test-admin-token"})
        assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
