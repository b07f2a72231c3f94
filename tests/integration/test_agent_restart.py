"""A real ``scheduler serve`` process SIGKILLed with 50 jobs running, then restarted: every
job keeps running, is recorded and billed exactly once, and none is started twice."""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.rundirs import run_dir_for
from tests.agent_process import leftover_job_cgroups, start_serve, wait_gone, wait_ready
from tests.conftest import SLOWDOWN, slow
from tests.integration.test_agent import wait_final

pytestmark = pytest.mark.anyio
JOBS = 50


async def test_sigkilled_agent_with_50_jobs_running_then_restarted(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    log = state_dir / "serve.log"
    state_dir.mkdir(exist_ok=True)
    agent = start_serve(dsn, state_dir, cgroup_root, log)
    try:
        await wait_ready(agent, log, 1)
        # Durations 0.4..3.3 s (times the slowdown): some end while the agent is down, some
        # after it is back. Small requests: admission must let all 50 run at once on 2 cores
        # (0.01 core each; 0.04 under emulation, where exec alone takes milliseconds of cpu).
        cpu = Decimal(str(min(0.04, 0.01 * SLOWDOWN)))
        ids = [
            int(r["id"])
            for r in await db.fetch(
                "INSERT INTO scheduler.jobs (argv, cpu, memory_bytes) SELECT ARRAY['sh', '-c', "
                "'echo started; sleep ' || ((0.4 + (i % 10) * 0.3) * $1)::text || '; echo ended'],"
                f" $2, 16777216 FROM generate_series(1, {JOBS}) i RETURNING id",
                Decimal(str(SLOWDOWN)),
                cpu,
            )
        ]
        runs = state_dir / "runs"
        monitors = state_dir / "run"  # the default runtime_dir
        with anyio.fail_after(slow(60)):
            # Every job has executed its first command (the monitor is running).
            while not all(
                (run_dir_for(runs, i, 1) / "stdout").is_file()
                and (run_dir_for(runs, i, 1) / "stdout").read_text().startswith("started")
                for i in ids
            ):
                await anyio.sleep(0.05)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        killed_at = time.monotonic()
        # The jobs live on without the agent; some of them end while it is down.
        await anyio.sleep(1.5)
        with anyio.fail_after(slow(5)):  # emulated: the first may take longer to end
            while not any((run_dir_for(monitors, i, 1) / "exit").exists() for i in ids):
                await anyio.sleep(0.05)
        ended_while_down = sum((run_dir_for(monitors, i, 1) / "exit").exists() for i in ids)
        assert 0 < ended_while_down < JOBS
        assert (
            await db.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state = 'running'", ids
            )
            == JOBS
        )
        agent = start_serve(dsn, state_dir, cgroup_root, log)
        await wait_ready(agent, log, 2)
        rows = await wait_final(db, ids, timeout=60)
        # Recorded: the agent removes each monitor's pid and exit record just after the
        # commit, so it must still run while they go (stopped at once, the emulated VM's
        # agent had not removed the last one yet).
        for i in ids:
            await wait_gone(run_dir_for(monitors, i, 1))
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    assert time.monotonic() - killed_at < slow(60)
    assert [r["state"] for r in rows] == ["succeeded"] * JOBS, [
        (r["id"], r["state"], r["error"]) for r in rows if r["state"] != "succeeded"
    ]
    # Started once: one attempt, one run directory, one line of each kind.
    assert all(r["attempts"] == 1 for r in rows)
    for i in ids:
        assert (run_dir_for(runs, i, 1) / "stdout").read_text() == "started\nended\n"
        assert not run_dir_for(runs, i, 2).exists()
        assert not run_dir_for(monitors, i, 1).exists()
    # Billed once: exactly one usage row per job, the final one, equal to the job's totals.
    usage = await db.fetch(
        "SELECT u.job_id, count(*) AS n, bool_and(u.final) AS final, "
        "sum(u.cpu_seconds) = j.cpu_seconds AS cpu_matches "
        "FROM scheduler.usage u JOIN scheduler.jobs j ON j.id = u.job_id "
        "WHERE u.job_id = ANY($1) GROUP BY u.job_id, j.cpu_seconds",
        ids,
    )
    assert len(usage) == JOBS
    assert all(u["n"] == 1 and u["final"] and u["cpu_matches"] for u in usage)
    # No cgroup left behind (the recorder removes each after its commit).
    with anyio.fail_after(slow(10)):
        while leftover := leftover_job_cgroups(cgroup_root):
            await anyio.sleep(0.05)
    assert leftover == []
