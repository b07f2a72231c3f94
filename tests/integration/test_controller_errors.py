"""The controller when the kernel refuses: a freeze that is not confirmed leaves the job
running, its state 'running' and its error column saying why (real Postgres, a real cgroup,
and the real v1/v2 driver with its freeze made to fail)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from scheduler.agent.attempts import Attempts
from scheduler.agent.claim import claim
from scheduler.agent.controller import Controller
from scheduler.agent.tenants import TenantCgroups
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.cgroups.detect import open_driver
from scheduler.db.pool import create_pool
from scheduler.errors import CgroupError
from scheduler.jobs import Job
from scheduler.policy.admission import Capacity

pytestmark = pytest.mark.anyio


class RefusingFreeze:
    """The real driver, except that freeze fails as an unconfirmed freeze does."""

    def __init__(self, driver: CgroupDriver) -> None:
        self._driver = driver

    def __getattr__(self, name: str) -> object:
        return getattr(self._driver, name)

    def freeze(self, path: CgroupPath) -> None:
        raise CgroupError(f"{path.rel} stayed FREEZING for 2.0 s; thawed it again")


class CountingExists:
    """The real driver, counting its ``exists`` calls."""

    def __init__(self, driver: CgroupDriver) -> None:
        self._driver = driver
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._driver, name)

    def exists(self, path: CgroupPath) -> bool:
        self.calls += 1
        return self._driver.exists(path)


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=4, agent_writer=True)
    yield pool
    await pool.close()


async def claimed_job(
    db: asyncpg.Connection, pool: asyncpg.Pool, cgroup_root: str
) -> tuple[CgroupDriver, Job, TenantCgroups, CgroupPath]:
    """One `true` job inserted and claimed by node n1; its (not yet made) cgroup's path."""
    driver = open_driver(cgroup_root)
    driver.ensure(CgroupPath(()), Limits())
    await db.execute("INSERT INTO scheduler.jobs (argv) VALUES (ARRAY['true'])")
    [row] = await claim(pool, "n1", 1, Capacity(4, 2**34))
    job = Job.from_row(row)
    tenants = TenantCgroups(pool, driver)
    return driver, job, tenants, CgroupPath.for_job(await tenants.chain("default"), job.id)


async def test_an_unconfirmed_freeze_leaves_the_job_running_and_says_why(
    db: asyncpg.Connection, pool: asyncpg.Pool, cgroup_root: str, state_dir: Path
) -> None:
    driver, job, tenants, cgroup = await claimed_job(db, pool, cgroup_root)
    job_id = job.id
    driver.ensure(cgroup, Limits())  # stands in for the job's leaf (no process needed)
    attempts = Attempts()
    refusing: CgroupDriver = RefusingFreeze(driver)  # type: ignore[assignment]
    controller = Controller(pool, refusing, attempts, tenants, node="n1", poll_interval=1)
    attempt = attempts.start(job, cgroup)
    await db.execute("UPDATE scheduler.jobs SET desired_state = 'frozen' WHERE id = $1", job_id)
    retry = await controller.reconcile({job_id}, tenants=True)
    assert retry == set()
    assert not attempt.frozen_self
    assert not attempt.clock.paused
    after = await db.fetchrow("SELECT state, error FROM scheduler.jobs WHERE id = $1", job_id)
    assert after is not None
    state, error = after["state"], str(after["error"])
    assert state == "running"
    assert error.startswith("freeze failed: ")
    assert "thawed it again" in error
    # Cancel still works through the same driver: the attempt is asked again until it ends.
    # (Without its grace: a plain cancel first sends SIGTERM and waits kill_grace_seconds.)
    await db.execute(
        "UPDATE scheduler.jobs SET desired_state = 'cancelled', kill_grace_seconds = 0"
        " WHERE id = $1",
        job_id,
    )
    assert await controller.reconcile({job_id}, tenants=False) == {job_id}
    assert attempt.cancelled
    attempts.end(job_id)
    assert await controller.reconcile({job_id}, tenants=False) == set()


async def test_a_fresh_attempt_is_not_thawed_while_its_monitor_makes_its_cgroup(
    db: asyncpg.Connection, pool: asyncpg.Pool, cgroup_root: str
) -> None:
    # A sweep that meets an attempt whose monitor has made its cgroup in one hierarchy and
    # not yet in the freezer's: a thaw then fails for want of the file. A new attempt's
    # cgroup is made unfrozen, so nothing is written, and no error lands on the job.
    driver, job, tenants, cgroup = await claimed_job(db, pool, cgroup_root)
    job_id = job.id
    first, *rest = driver.plan(cgroup, Limits()).mkdirs
    Path(first).mkdir()  # the monitor is part way through its mkdirs
    attempts = Attempts()
    counting = CountingExists(driver)
    controller = Controller(pool, counting, attempts, tenants, node="n1", poll_interval=1)  # type: ignore[arg-type]
    await controller.reconcile(None, tenants=True)  # the tenants' first look
    counting.calls = 0
    fresh = attempts.start(job, cgroup)
    assert await controller.reconcile(None, tenants=False) == set()
    assert await db.fetchval("SELECT error FROM scheduler.jobs WHERE id = $1", job_id) is None
    assert fresh.verified and not fresh.frozen
    assert counting.calls == 0  # a sweep does not look at a running attempt's cgroup
    # An adopted attempt is checked once against the kernel instead: its cgroup may have
    # been left frozen by the agent before.
    for leaf in rest:
        Path(leaf).mkdir()
    attempts.end(job_id)
    adopted = attempts.start(job, cgroup, adopted=True)
    assert not adopted.verified
    assert await controller.reconcile(None, tenants=False) == set()
    assert adopted.verified and counting.calls == 1
