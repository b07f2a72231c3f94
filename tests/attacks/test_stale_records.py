"""A state directory that outlives its database: the new database issues job ids again, and
an earlier job 3's exit record and output must never become the new job 3's.

A real ``scheduler serve``: on the first database jobs 1-3 end while the agent is stopped
before recording (their exit records stay), the agent is SIGKILLed; a new database under the
same state directory gets a new job 3 that is still running when the agent is SIGKILLed
again and restarted."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.rundirs import run_dir_for
from tests.agent_process import sigkill, start_serve, stop, wait_ready, wait_stopped
from tests.attacks.outcomes import record
from tests.conftest import slow, with_database
from tests.integration.test_agent import wait_final, wait_state

pytestmark = pytest.mark.anyio


async def submit_three(db: asyncpg.Connection, commands: list[str]) -> list[int]:
    rows = await db.fetch(
        # A tenth of a core each: all three fit this 2-core node at once.
        "INSERT INTO scheduler.jobs (argv, cpu) SELECT ARRAY['sh', '-c', c], 0.1"
        " FROM unnest($1::text[]) WITH ORDINALITY AS t(c, n) ORDER BY n RETURNING id",
        commands,
    )
    return [int(r["id"]) for r in rows]


def log_events(log: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == event:
            found.append(entry)
    return found


async def wait_for(path: Path, timeout: float = 30) -> None:
    with anyio.move_on_after(slow(timeout)):
        while not path.exists():
            await anyio.sleep(0.02)
    assert path.exists(), sorted(str(p) for p in path.parent.parent.rglob("*"))


async def test_a_reset_database_never_gets_an_earlier_jobs_exit(
    dsn: str, pg_admin_dsn: str, template_db: str, state_dir: Path, cgroup_root: str
) -> None:
    monitors, runs = state_dir / "run", state_dir / "runs"
    log = state_dir.parent / f"{state_dir.name}.log"
    # The first database: three jobs end while the agent is stopped before recording them.
    old_db = await asyncpg.connect(dsn)
    agent = start_serve(
        dsn, state_dir, cgroup_root, log, env={"SCHEDULER_FAILPOINTS": "before_record=stop"}
    )
    new_name = f"t_{uuid.uuid4().hex[:12]}"
    new_dsn = with_database(pg_admin_dsn, new_name)
    try:
        await wait_ready(agent, log, 1)
        old = await submit_three(old_db, ["echo old-$SCHEDULER_JOB_ID; sleep 2"] * 3)
        assert old == [1, 2, 3]
        await wait_stopped(agent, log)
        for job_id in old:
            await wait_for(run_dir_for(monitors, job_id, 1) / "exit")
        sigkill(agent)
        old_exit = (run_dir_for(monitors, 3, 1) / "exit").read_text()
        assert "kind=exited\nexit_code=0\n" in old_exit
        assert (run_dir_for(runs, 3, 1) / "stdout").read_text() == "old-3\n"
        await old_db.close()

        # The database is reset under the kept state directory: ids begin again at 1.
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f"CREATE DATABASE {new_name} TEMPLATE {template_db}")
        finally:
            await admin.close()
        db = await asyncpg.connect(new_dsn)
        try:
            agent = start_serve(new_dsn, state_dir, cgroup_root, log)
            await wait_ready(agent, log, 2)
            # Job 3 must still run when the next agent recovers it (4 s here, scaled under
            # emulation, where it had ended and replaced the planted record by then).
            late = f"echo new; sleep {slow(4):g}; exit 7"
            new = await submit_three(db, ["true", "true", late])
            assert new == [1, 2, 3]
            await wait_state(db, 3, "running")
            await wait_final(db, [1, 2])
            await wait_for(run_dir_for(monitors, 3, 1) / "exit.reserve")
            # The launch cleared the earlier attempt's records (no monitor of it was alive).
            assert not (run_dir_for(monitors, 3, 1) / "exit").exists()
            with anyio.fail_after(slow(20)):
                while not (run_dir_for(runs, 3, 1) / "stdout").exists():
                    await anyio.sleep(0.02)
            sigkill(agent)
            # The earlier job 3's record turns up again (a state directory restored from a
            # copy): recovery must not take it for the running job 3's.
            (run_dir_for(monitors, 3, 1) / "exit").write_text(old_exit)
            agent = start_serve(new_dsn, state_dir, cgroup_root, log)
            await wait_ready(agent, log, 3)
            (job3,) = await wait_final(db, [3], timeout=60)
            assert (job3["state"], job3["exit_code"]) == ("failed", 7)
            cleared = {e["run_dir"] for e in log_events(log, "stale_run_dir_cleared")}
            assert str(run_dir_for(monitors, 3, 1)) in cleared
            ignored = [e for e in log_events(log, "runtime_record_ignored") if e["job_id"] == 3]
            assert len(ignored) == 1
            assert ignored[0]["reason"] == "it belongs to another database"
            assert (run_dir_for(runs, 3, 1) / "stdout").read_text() == "new\n"
            stop(agent)
        finally:
            await db.close()
    finally:
        stop(agent)
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {new_name} WITH (FORCE)")
        finally:
            await admin.close()
        log.unlink(missing_ok=True)
    record(
        "stale exit record of a reset database's job 3",
        "cleared at the new job 3's launch; a copy planted before recovery was ignored"
        " (logged); job 3 ended failed, exit 7, its own output",
    )
