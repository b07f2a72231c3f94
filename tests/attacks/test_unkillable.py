"""A job whose processes outlive SIGKILL for a while, made real and deterministic: the test
moves the job's processes into a frozen v1 freezer cgroup of its own (outside the job's
cgroup, which the agent's kill thaws), where a SIGKILL stays pending until the test thaws
them, as a task stuck in throttled writeback does until its I/O completes.

The job must stay running with the kill retried and visible (metric, /readyz, its error),
write no zero-valued usage rows, and end once the processes are gone, billed exactly once."""

from __future__ import annotations

import re
import time
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from scheduler.rundirs import run_dir_for
from tests.agent_process import sigkill, start_serve, stop, wait_ready
from tests.attacks.outcomes import record
from tests.conftest import agent_settings, start_agent
from tests.integration.test_agent import submit, wait_final, wait_state
from tests.integration.test_metrics_endpoint import parse

# The frozen v1 freezer cgroup is what holds SIGKILL back: a v1 (or hybrid) host only.
pytestmark = [pytest.mark.anyio, pytest.mark.v1_host]
UNIFIED = Path("/sys/fs/cgroup/unified")
FREEZER = Path("/sys/fs/cgroup/freezer")


def job_pids(cgroup_root: str, job_id: int) -> list[int]:
    """The job's processes, from its cgroup2 mirror (the hierarchy the agent kills with)."""
    found = list((UNIFIED / cgroup_root).rglob(f"job-{job_id}"))
    if not found:
        return []
    text = (found[0] / "cgroup.procs").read_text()
    return [int(p) for p in text.split()]


async def freeze_into(icebox: Path, pids: list[int]) -> None:
    icebox.mkdir()
    for pid in pids:
        (icebox / "cgroup.procs").write_text(str(pid))
    (icebox / "freezer.state").write_text("FROZEN")
    with anyio.fail_after(10):
        while (icebox / "freezer.state").read_text().strip() != "FROZEN":
            await anyio.sleep(0.02)


def thaw_and_remove(icebox: Path) -> None:
    """Thaw: the tasks act on their pending SIGKILL and leave; then remove the cgroup."""
    if not icebox.is_dir():
        return
    (icebox / "freezer.state").write_text("THAWED")
    deadline = time.monotonic() + 30
    while True:
        try:
            icebox.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
        else:
            return


async def get(base: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{base}") as client:
        return await client.get(path)


@pytest.mark.parametrize("end", ["timed_out", "cancelled"])
async def test_processes_that_survive_sigkill_keep_the_job_running_until_gone(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str, end: str
) -> None:
    # timed_out: the runner's kill at the time limit; cancelled: the controller's.
    icebox = FREEZER / f"{cgroup_root}-icebox"
    settings = agent_settings(
        dsn,
        state_dir,
        cgroup_root,
        term_grace_seconds=0.2,
        sample_interval=0.2,
        sample_interval_floor=0.1,
    )
    try:
        async with anyio.create_task_group() as tg:
            agent = await start_agent(tg, settings)
            http = agent.ready.http
            assert http is not None
            # Long enough to freeze the job first on a loaded host.
            limit = Decimal("6") if end == "timed_out" else None
            job_id = await submit(db, ["sleep", "600"], timeout_seconds=limit)
            await wait_state(db, job_id, "running")
            with anyio.fail_after(20):
                while len(pids := job_pids(cgroup_root, job_id)) < 2:  # init and sleep
                    await anyio.sleep(0.02)
            await freeze_into(icebox, pids)
            if end == "cancelled":
                await db.execute(
                    "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", job_id
                )

            # The time limit passes, SIGTERM and SIGKILL stay pending: the job is stuck.
            with anyio.fail_after(60):
                while True:
                    metrics = parse((await get(http, "/metrics")).text)
                    if metrics.get(("scheduler_unkillable_jobs", ())) == 1:
                        break
                    await anyio.sleep(0.2)
            ready = await get(http, "/readyz")
            assert ready.status_code == 503
            assert f"job(s) {job_id} survive SIGKILL" in ready.text
            row = await db.fetchrow("SELECT state, error FROM scheduler.jobs WHERE id = $1", job_id)
            assert row is not None
            assert row["state"] == "running"  # its processes still hold the node
            assert "survive SIGKILL" in row["error"]
            # A few retries and sweeps while stuck: the job stays running and visible.
            await anyio.sleep(3)
            assert (
                await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id)
                == "running"
            )
            assert set(job_pids(cgroup_root, job_id)) == set(pids)

            thaw_and_remove(icebox)
            (final,) = await wait_final(db, [job_id], timeout=60)
            assert final["state"] == end
            metrics = parse((await get(http, "/metrics")).text)
            assert metrics[("scheduler_unkillable_jobs", ())] == 0
            assert (await get(http, "/readyz")).json() == {"status": "ready"}
            tg.cancel_scope.cancel()
    finally:
        thaw_and_remove(icebox)

    rows = await db.fetch(
        "SELECT seq, cpu_seconds, memory_byte_seconds, io_read_bytes, io_write_bytes, final"
        " FROM scheduler.usage WHERE job_id = $1 ORDER BY seq",
        job_id,
    )
    # Periodic rows only: the closing row ends the attempt's billing whatever it holds.
    zero = [
        r["seq"]
        for r in rows
        if not r["final"]
        and not (
            r["cpu_seconds"]
            or r["memory_byte_seconds"]
            or r["io_read_bytes"]
            or r["io_write_bytes"]
        )
    ]
    assert zero == [], f"zero-valued usage rows {zero} of {[dict(r) for r in rows][-5:]}"
    assert [r["final"] for r in rows].count(True) == 1  # billed once
    totals = await db.fetchrow(
        "SELECT cpu_seconds, io_write_bytes FROM scheduler.jobs WHERE id = $1", job_id
    )
    assert totals is not None
    assert totals["cpu_seconds"] == sum(r["cpu_seconds"] for r in rows)
    assert totals["io_write_bytes"] == sum(r["io_write_bytes"] for r in rows)
    record(
        f"job processes survive SIGKILL ({end.replace('_', ' ')}, v1-frozen)",
        f"kept running with the kill retried, visible (metric, /readyz, error);"
        f" ended {end} once empty, {len(rows)} usage rows, none zero, one final",
    )


async def test_a_restart_finds_processes_that_survive_sigkill_without_their_monitor(
    db: asyncpg.Connection, dsn: str, state_dir: Path, cgroup_root: str
) -> None:
    """At start-up, an attempt with neither a monitor nor a record whose processes resist
    the kill: the agent must still start, keep the job running and visible while they do,
    and record it lost, billed once, when they are gone."""
    icebox = FREEZER / f"{cgroup_root}-icebox"
    log = state_dir.parent / f"{state_dir.name}.log"
    agent = start_serve(dsn, state_dir, cgroup_root, log)
    try:
        await wait_ready(agent, log, 1)
        job_id = await submit(db, ["sleep", "600"], cpu=Decimal("0.1"))
        await wait_state(db, job_id, "running")
        with anyio.fail_after(20):
            while len(pids := job_pids(cgroup_root, job_id)) < 2:
                await anyio.sleep(0.02)
        await freeze_into(icebox, pids)
        sigkill(agent)
        # The record is lost (its monitor, left alone, can no longer write it).
        (run_dir_for(state_dir / "run", job_id, 1) / "exit.reserve").unlink()
        agent = start_serve(dsn, state_dir, cgroup_root, log)
        await wait_ready(agent, log, 2)
        http = re.findall(r"HTTP API on http://([^/]+)/v1", log.read_text())[-1]
        with anyio.fail_after(60):
            while (
                parse((await get(http, "/metrics")).text).get(("scheduler_unkillable_jobs", ()))
                != 1
            ):
                await anyio.sleep(0.2)
        row = await db.fetchrow("SELECT state, error FROM scheduler.jobs WHERE id = $1", job_id)
        assert row is not None
        assert row["state"] == "running"
        assert "survive SIGKILL" in row["error"]
        thaw_and_remove(icebox)
        (final,) = await wait_final(db, [job_id], timeout=60)
        assert final["state"] == "lost"
        assert (
            await db.fetchval(
                "SELECT count(*) FROM scheduler.usage WHERE job_id = $1 AND final", job_id
            )
            == 1
        )
        assert parse((await get(http, "/metrics")).text)[("scheduler_unkillable_jobs", ())] == 0
    finally:
        stop(agent)
        thaw_and_remove(icebox)
        log.unlink(missing_ok=True)
    record(
        "processes survive SIGKILL, monitor and record gone, agent restarted",
        "agent started; job kept running and visible until empty, then lost, one final row",
    )
