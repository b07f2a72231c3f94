"""Schedules fired by real agents, against a test clock that the test moves minute by minute
(the agents read it instead of the wall clock): one job per due time with two agents racing
and one restarting, a downtime's missed due times fired once, overlap skip against queue, and a
row with an expression croniter refuses disabled with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from scheduler.agent.service import Ready, run_agent
from scheduler.config import Settings
from tests.conftest import AgentHandle, agent_settings, slow

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)


def minute(n: int) -> datetime:
    """The n-th due time of an every-minute schedule after T0."""
    return datetime(2026, 6, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=n)


class ManualClock:
    """A clock the test sets; the agents poll it often, so a move is seen within 50 ms."""

    def __init__(self, start: datetime) -> None:
        self.value = start

    def now(self) -> datetime:
        return self.value

    def real_seconds(self, seconds: float) -> float:
        return min(seconds, 0.05)


STOPPED: dict[int, anyio.Event] = {}


async def stop(handle: AgentHandle) -> None:
    """Stop an agent and wait until it has ended (its loops, its lease)."""
    handle.stop()
    with anyio.fail_after(slow(30)):
        await STOPPED[id(handle)].wait()


async def start_clocked_agent(
    tg: anyio.abc.TaskGroup, settings: Settings, clock: ManualClock
) -> AgentHandle:
    """conftest.start_agent with the schedule loop on ``clock``."""
    assert settings.db.url is not None
    ready: list[Ready] = []
    event, ended = anyio.Event(), anyio.Event()
    scope = anyio.CancelScope()

    def on_ready(r: Ready) -> None:
        ready.append(r)
        event.set()

    async def run() -> None:
        try:
            with scope:
                assert settings.db.url is not None
                await run_agent(settings, settings.db.url, on_ready=on_ready, schedule_clock=clock)
        finally:
            ended.set()

    tg.start_soon(partial(run))
    with anyio.fail_after(slow(60)):
        await event.wait()
    handle = AgentHandle(settings, ready[0], scope)
    STOPPED[id(handle)] = ended
    return handle


async def add_schedule(
    db: asyncpg.Connection, name: str, job: dict[str, Any], **values: Any
) -> None:
    """A schedule written with plain SQL, as a psql user would: an agent plans it."""
    row = {"name": name, "cron": "* * * * *", "job": job, **values}
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await db.execute(
        f"INSERT INTO scheduler.schedules ({', '.join(row)}) VALUES ({params})", *row.values()
    )


async def schedule(db: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM scheduler.schedules WHERE name = $1", name)
    assert row is not None
    return row


async def wait_for(db: asyncpg.Connection, query: str, *args: Any, timeout: float = 30) -> Any:
    """Until ``query`` returns a true value; returns it."""
    with anyio.fail_after(slow(timeout)):
        while True:
            value = await db.fetchval(query, *args)
            if value:
                return value
            await anyio.sleep(0.02)


async def scheduled_jobs(db: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT id, name, schedule_due, state, argv FROM scheduler.jobs WHERE schedule = $1"
            " ORDER BY schedule_due, id",
            name,
        )
    )


async def advance(db: asyncpg.Connection, clock: ManualClock, to: datetime) -> None:
    """Move the clock and wake every agent at once (they race for the due schedule)."""
    clock.value = to
    await db.execute("SELECT pg_notify('scheduler_schedules', 'test')")


@pytest.fixture
async def clock() -> AsyncIterator[ManualClock]:
    yield ManualClock(T0)


async def test_every_minute_across_two_agents_a_restart_and_a_downtime(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    tmp_path: Path,
    cgroup_root: str,
    peer_cgroup_roots: list[str],
    clock: ManualClock,
) -> None:
    settings_a = agent_settings(dsn, state_dir, cgroup_root, node_name="sched-a")
    state_b = tmp_path / "state-b"
    settings_b = agent_settings(dsn, state_b, peer_cgroup_roots[0], node_name="sched-b")
    async with anyio.create_task_group() as tg:
        a = await start_clocked_agent(tg, settings_a, clock)
        b = await start_clocked_agent(tg, settings_b, clock)
        await add_schedule(
            db, "tick", {"argv": ["true"], "memory_bytes": 64 << 20}, overlap="queue"
        )
        # Planned by an agent from the test clock: the next whole minute.
        assert await wait_for(
            db, "SELECT next_run_at FROM scheduler.schedules WHERE name = 'tick'"
        ) == minute(1)
        for n in range(1, 9):
            if n == 4:
                await stop(a)  # an agent stops between two due times ...
            if n == 6:
                a = await start_clocked_agent(tg, settings_a, clock)  # ... and comes back
            # Nothing fires before its time: the job of minute n does not exist yet.
            assert len(await scheduled_jobs(db, "tick")) == n - 1
            await advance(db, clock, minute(n) + timedelta(seconds=n % 3))
            await wait_for(
                db,
                "SELECT next_run_at = $1 FROM scheduler.schedules WHERE name = 'tick'",
                minute(n + 1),
            )
            # A racing agent woken at the same time may still be looking: give it the chance.
            await anyio.sleep(0.2)
        jobs = await scheduled_jobs(db, "tick")
        # Exactly one job per due time, each carrying the schedule's name.
        assert [j["schedule_due"] for j in jobs] == [minute(n) for n in range(1, 9)]
        assert {j["name"] for j in jobs} == {"tick"}
        row = await schedule(db, "tick")
        assert row["last_run_at"] == minute(8) and row["last_job_id"] == jobs[-1]["id"]

        # The eight ran before their agents stop (a job still running on an agent that stops
        # for good would be its lease's to settle, not this test's: under emulation, one was).
        await wait_for(
            db,
            "SELECT count(*) = 8 FROM scheduler.jobs WHERE schedule = 'tick'"
            " AND state = 'succeeded'",
        )
        # Every agent down for five due times, then one back: the missed times fire once.
        await stop(a)
        await stop(b)
        clock.value = minute(14) + timedelta(seconds=20)
        await anyio.sleep(0.5)
        assert len(await scheduled_jobs(db, "tick")) == 8
        b = await start_clocked_agent(tg, settings_b, clock)
        await wait_for(
            db,
            "SELECT next_run_at = $1 FROM scheduler.schedules WHERE name = 'tick'",
            minute(15),
        )
        await anyio.sleep(0.5)
        jobs = await scheduled_jobs(db, "tick")
        # The first missed due time, once; the schedule goes on from now, not from then.
        assert [j["schedule_due"] for j in jobs[8:]] == [minute(9)]
        # And the jobs ran: scheduled jobs are ordinary jobs.
        await wait_for(
            db,
            "SELECT count(*) = 9 FROM scheduler.jobs WHERE schedule = 'tick'"
            " AND state = 'succeeded'",
        )
        tg.cancel_scope.cancel()


async def test_overlap_skip_waits_for_the_previous_job_and_queue_does_not(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str, clock: ManualClock
) -> None:
    long_job = {"argv": ["sleep", "300"], "memory_bytes": 64 << 20}
    async with anyio.create_task_group() as tg:
        await start_clocked_agent(tg, agent_settings(dsn, state_dir, cgroup_root), clock)
        await add_schedule(db, "skipper", long_job, overlap="skip")
        await add_schedule(db, "queuer", long_job, overlap="queue")
        await wait_for(db, "SELECT bool_and(next_run_at IS NOT NULL) FROM scheduler.schedules")
        await advance(db, clock, minute(1))
        await wait_for(
            db, "SELECT count(*) = 2 FROM scheduler.jobs WHERE state = 'running'", timeout=30
        )
        await advance(db, clock, minute(2))
        await wait_for(db, "SELECT bool_and(last_run_at = $1) FROM scheduler.schedules", minute(2))
        skipper, queuer = await scheduled_jobs(db, "skipper"), await scheduled_jobs(db, "queuer")
        assert [j["schedule_due"] for j in skipper] == [minute(1)]
        assert [j["schedule_due"] for j in queuer] == [minute(1), minute(2)]
        row = await schedule(db, "skipper")
        # The skip is recorded, and the schedule moved on to its next due time.
        assert (row["skipped_runs"], row["last_skipped_at"]) == (1, minute(2))
        assert row["next_run_at"] == minute(3)
        assert (await schedule(db, "queuer"))["skipped_runs"] == 0
        # Once the previous job ended, skip fires again.
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE schedule = 'skipper'"
        )
        await wait_for(
            db,
            "SELECT bool_and(state = 'cancelled') FROM scheduler.jobs WHERE schedule = 'skipper'",
        )
        await advance(db, clock, minute(3))
        await wait_for(
            db, "SELECT last_run_at = $1 FROM scheduler.schedules WHERE name = 'skipper'", minute(3)
        )
        skipper = await scheduled_jobs(db, "skipper")
        assert [j["schedule_due"] for j in skipper] == [minute(1), minute(3)]
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE schedule IS NOT NULL AND state IN ('queued', 'running')"
        )
        await wait_for(
            db, "SELECT count(*) = 0 FROM scheduler.jobs WHERE state IN ('queued', 'running')"
        )
        tg.cancel_scope.cancel()


async def test_pause_resume_and_a_row_croniter_refuses(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str, clock: ManualClock
) -> None:
    async with anyio.create_task_group() as tg:
        await start_clocked_agent(tg, agent_settings(dsn, state_dir, cgroup_root), clock)
        # Five fields, so the database takes it; croniter does not: the agent disables it.
        await add_schedule(db, "broken", {"argv": ["true"]}, cron="61 * * * *")
        await add_schedule(db, "paused", {"argv": ["true"]}, overlap="queue")
        error = await wait_for(db, "SELECT error FROM scheduler.schedules WHERE name = 'broken'")
        assert "out of range" in error
        assert not (await schedule(db, "broken"))["enabled"]
        await wait_for(db, "SELECT next_run_at FROM scheduler.schedules WHERE name = 'paused'")
        await db.execute("UPDATE scheduler.schedules SET enabled = false WHERE name = 'paused'")
        for n in (1, 2, 3):
            await advance(db, clock, minute(n))
        await anyio.sleep(0.5)
        assert await scheduled_jobs(db, "paused") == []
        # Resumed through SQL at 12:03:30: planned again from now, the paused times not made up.
        clock.value = minute(3) + timedelta(seconds=30)
        await db.execute("UPDATE scheduler.schedules SET enabled = true WHERE name = 'paused'")
        assert await wait_for(
            db, "SELECT next_run_at FROM scheduler.schedules WHERE name = 'paused'"
        ) == minute(4)
        await advance(db, clock, minute(4))
        await wait_for(
            db, "SELECT last_run_at = $1 FROM scheduler.schedules WHERE name = 'paused'", minute(4)
        )
        assert [j["schedule_due"] for j in await scheduled_jobs(db, "paused")] == [minute(4)]
        # Removed: no more jobs; the jobs it made keep its name.
        await db.execute("DELETE FROM scheduler.schedules WHERE name = 'paused'")
        await advance(db, clock, minute(5))
        await anyio.sleep(0.5)
        assert len(await scheduled_jobs(db, "paused")) == 1

        # A template the jobs' rules refuse at a due time (written past the check here, as a
        # later migration's stricter rule would): no job, the schedule off with the reason.
        await add_schedule(db, "stale", {"argv": ["true"]}, overlap="queue")
        await wait_for(db, "SELECT next_run_at FROM scheduler.schedules WHERE name = 'stale'")
        async with db.transaction():
            await db.execute(
                "ALTER TABLE scheduler.schedules DISABLE TRIGGER schedules_before_write"
            )
            await db.execute(
                'UPDATE scheduler.schedules SET job = \'{"argv": ["true"], "pids_max": 0}\''
                " WHERE name = 'stale'"
            )
            await db.execute(
                "ALTER TABLE scheduler.schedules ENABLE TRIGGER schedules_before_write"
            )
        await advance(db, clock, minute(6))
        error = await wait_for(db, "SELECT error FROM scheduler.schedules WHERE name = 'stale'")
        assert "the job template is refused" in error and "pids_max" in error
        assert not (await schedule(db, "stale"))["enabled"]
        assert await scheduled_jobs(db, "stale") == []
        tg.cancel_scope.cancel()
