"""/metrics of a live agent after real jobs: tenant counters from the tenant's cgroup, per-job
series only while a job runs, service statistics, and promtool's approval."""

from __future__ import annotations

import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import submit, wait_final, wait_state

pytestmark = pytest.mark.anyio
FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.1}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(agent: AgentHandle, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}") as client:
        return await client.get(path)


async def test_metrics_after_real_jobs(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    settings = agent_settings(dsn, state_dir, cgroup_root, **FAST)
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, settings)
        assert (await scrape(agent, "/healthz")).status_code == 200
        assert (await scrape(agent, "/readyz")).json() == {"status": "ready"}
        busy = [
            await submit(
                db, ["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"], tenant="acme"
            )
            for _ in range(3)
        ]
        await wait_final(db, busy)
        held = await submit(db, ["sleep", "30"], tenant="acme", desired_state="frozen")
        running = await submit(db, ["sleep", "30"], tenant="acme", timeout_seconds=Decimal("1.5"))
        await wait_state(db, running, "running")
        await anyio.sleep(0.6)  # a couple of sweeps
        response = await scrape(agent)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        live = parse(response.text)
        await wait_final(db, [running])
        await anyio.sleep(0.5)
        after = parse((await scrape(agent)).text)
        text_after = (await scrape(agent)).text
        tg.cancel_scope.cancel()

    finished_cpu = await db.fetchval(
        "SELECT sum(cpu_seconds) FROM scheduler.jobs WHERE id = ANY($1)", busy
    )
    tenant_cpu = (
        after[("scheduler_tenant_cpu_seconds_total", (("mode", "user"), ("tenant", "acme")))]
        + after[("scheduler_tenant_cpu_seconds_total", (("mode", "system"), ("tenant", "acme")))]
    )
    # Exited jobs stay counted in the tenant's cgroup (user+system ticks round to 10 ms on v1).
    assert tenant_cpu >= float(finished_cpu) * 0.5 > 0
    for key, value in live.items():
        if key[0].startswith("scheduler_tenant_cpu_seconds"):
            assert after[key] >= value  # counters never go backwards
    job_key = ("scheduler_job_memory_bytes", (("job_id", str(running)), ("tenant", "acme")))
    assert live[job_key] > 0
    assert ("scheduler_job_cpu_seconds_total", job_key[1]) in live
    assert job_key not in after  # gone once the job ended
    assert not any(k[0].startswith("scheduler_job_") for k in after)
    assert after[("scheduler_tenant_jobs", (("state", "succeeded"), ("tenant", "acme")))] == 3
    assert after[("scheduler_tenant_jobs", (("state", "timed_out"), ("tenant", "acme")))] == 1
    assert after[("scheduler_queue_depth", (("tenant", "acme"),))] == 1  # the held job
    assert (
        after[("scheduler_jobs_finished_total", (("state", "succeeded"), ("tenant", "acme")))] == 3
    )
    assert (
        after[("scheduler_jobs_finished_total", (("state", "timed_out"), ("tenant", "acme")))] == 1
    )
    assert after[("scheduler_dispatch_latency_seconds_count", ())] == 4
    assert after[("scheduler_sample_duration_seconds_count", ())] >= 3
    assert after[("scheduler_database_errors_total", ())] == 0
    # PSI of the tenant's cgroup (this host's cgroup2 mirror has the pressure files).
    for resource in ("cpu", "memory", "io"):
        key = (
            "scheduler_tenant_pressure_stall_seconds_total",
            (("kind", "some"), ("resource", resource), ("tenant", "acme")),
        )
        assert after[key] >= live[key] >= 0
    assert held
    if shutil.which("promtool"):
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text_after.encode(),
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert not result.stdout.strip() and not result.stderr.strip()


async def test_per_job_series_can_be_switched_off(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root, metrics_jobs=0, **FAST)
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, settings)
        job = await submit(db, ["sleep", "30"], timeout_seconds=Decimal("1"))
        await wait_state(db, job, "running")
        # The tenant's gauge comes with the first sweep after the start (slow on a busy host).
        with anyio.fail_after(slow(15)):
            while 'scheduler_tenant_memory_bytes{tenant="default"}' not in (
                text := (await scrape(agent)).text
            ):
                await anyio.sleep(0.2)
        await wait_final(db, [job])
        tg.cancel_scope.cancel()
    assert "scheduler_job_" not in text
    assert 'scheduler_tenant_memory_bytes{tenant="default"}' in text
