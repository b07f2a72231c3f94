"""The state directory on a tiny tmpfs, filled to the last byte while a job runs: the agent
stops claiming, /readyz says why, the running job's exit is still recorded (its monitor
reserved the record's space at start), and everything resumes once space is freed."""

from __future__ import annotations

import os
from decimal import Decimal

import anyio
import asyncpg
import pytest

from scheduler.rundirs import run_dir_for
from tests.agent_process import wait_gone
from tests.conftest import SLOWDOWN, agent_settings, slow, start_agent
from tests.integration.test_agent import wait_final, wait_state
from tests.integration.test_metrics_endpoint import parse, scrape
from tests.integration.test_usage_spool import readyz
from tests.tmpfs import fill, free_bytes, tiny_tmpfs

pytestmark = pytest.mark.anyio
# A job that barely gets cpu (0.01 core here), scaled for an emulated host where its shell's
# start alone costs tens of milliseconds.
TINY_CPU = Decimal(str(min(1.0, 0.01 * SLOWDOWN)))


async def test_full_state_disk_pauses_claims_and_keeps_the_running_jobs_exit(
    dsn: str, db: asyncpg.Connection, cgroup_root: str
) -> None:
    with tiny_tmpfs("24m") as state_dir:
        settings = agent_settings(
            dsn, state_dir, cgroup_root, state_min_free_bytes=1 << 20, poll_interval=0.2
        )
        async with anyio.create_task_group() as tg:
            agent = await start_agent(tg, settings)
            running = int(
                await db.fetchval(
                    "INSERT INTO scheduler.jobs (argv, cpu) VALUES"
                    " (ARRAY['sh', '-c', 'echo started; sleep 3'], $1) RETURNING id",
                    TINY_CPU,
                )
            )
            run_dir = run_dir_for(settings.paths.runs_dir, running, 1)
            with anyio.fail_after(slow(20)):
                while not (run_dir / "stdout").is_file() or not (
                    (run_dir / "stdout").read_text().startswith("started")
                ):
                    await anyio.sleep(0.05)
            monitor_dir = run_dir_for(settings.paths.monitors_dir, running, 1)
            assert (monitor_dir / "exit.reserve").is_file()
            filler = fill(state_dir)
            assert free_bytes(state_dir) == 0
            with anyio.fail_after(slow(10)):
                while (await readyz(agent))[0] != 503:
                    await anyio.sleep(0.05)
            _status, reasons = await readyz(agent)
            assert any(r.startswith("state directory full") for r in reasons), reasons
            metrics = parse((await scrape(agent)).text)
            assert metrics[("scheduler_agent_degraded", (("condition", "state_disk"),))] == 1
            # Nothing is started on a full disk: the new job stays queued.
            waiting = int(
                await db.fetchval(
                    "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['true'], $1)"
                    " RETURNING id",
                    TINY_CPU,
                )
            )
            # The running job ends on the full disk: its exit record is written all the same
            # (the exit code comes from it), and removed once recorded.
            [row] = await wait_final(db, [running], timeout=20)
            assert (row["state"], row["exit_code"]) == ("succeeded", 0), row["error"]
            await wait_gone(monitor_dir)
            assert not monitor_dir.exists()
            assert free_bytes(state_dir) < settings.limits.state_min_free_bytes
            await anyio.sleep(1.0)
            assert (
                await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", waiting)
                == "queued"
            )
            assert (await readyz(agent))[0] == 503
            # Space is back: the agent recovers by itself.
            filler.unlink()
            await wait_state(db, waiting, "succeeded", timeout=20)
            with anyio.fail_after(slow(10)):
                while (await readyz(agent))[0] != 200:
                    await anyio.sleep(0.05)
            metrics = parse((await scrape(agent)).text)
            assert metrics[("scheduler_agent_degraded", (("condition", "state_disk"),))] == 0
            tg.cancel_scope.cancel()


async def test_a_claim_looks_at_the_state_disk_afresh(
    dsn: str, db: asyncpg.Connection, cgroup_root: str
) -> None:
    """A disk that fills just before a job arrives starts nothing, though the periodic check
    (up to a second old) still said it was fine: room for a monitor's exit record is left
    (below state_min_free_bytes), so only the claim's own look at the disk can stop it."""
    with tiny_tmpfs("24m") as state_dir:
        settings = agent_settings(
            dsn, state_dir, cgroup_root, state_min_free_bytes=1 << 20, poll_interval=5
        )
        async with anyio.create_task_group() as tg:
            agent = await start_agent(tg, settings)
            assert (await readyz(agent))[0] == 200
            filler = fill(state_dir)
            os.truncate(filler, filler.stat().st_size - (256 << 10))
            assert 0 < free_bytes(state_dir) < settings.limits.state_min_free_bytes
            job = int(
                await db.fetchval(
                    "INSERT INTO scheduler.jobs (argv, cpu) VALUES (ARRAY['true'], $1)"
                    " RETURNING id",
                    TINY_CPU,
                )
            )
            await anyio.sleep(slow(2))
            row = await db.fetchrow("SELECT state, attempts FROM scheduler.jobs WHERE id = $1", job)
            assert row is not None and (row["state"], row["attempts"]) == ("queued", 0)
            assert not run_dir_for(settings.paths.runs_dir, job, 1).exists()
            filler.unlink()
            await wait_state(db, job, "succeeded", timeout=20)
            tg.cancel_scope.cancel()
