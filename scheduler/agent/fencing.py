"""Fencing: attempts this node may no longer run are killed, never continued or recorded.

Two moments need it. At start-up, every job cgroup in this node's tree that is not one of the
attempts Postgres still gives this node (it was requeued or ended elsewhere after the lease
expired) is killed and removed. While running, an agent that lost its lease kills every
attempt it runs before the lease could be handed on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator

import anyio
import structlog

from scheduler.agent.attempts import Attempt
from scheduler.cgroups.asyncdriver import AsyncDriver, async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath
from scheduler.errors import ProcessesSurvive

log = structlog.get_logger(__name__)
_JOB = re.compile(r"^job-(\d+)$")
# How long a killed cgroup may take to empty before it is left for the next start.
DRAIN_SECONDS = 10.0


def job_cgroups(
    driver: CgroupDriver, path: CgroupPath | None = None
) -> Iterator[tuple[int, CgroupPath]]:
    """Every job cgroup (a ``job-N`` leaf) under ``path``, with its job id."""
    path = path or CgroupPath(())
    for name in driver.children(path):
        child = CgroupPath((*path.parts, name))
        below = driver.children(child)
        match = _JOB.match(name)
        if match and not below:
            yield int(match.group(1)), child
        else:
            yield from job_cgroups(driver, child)


async def _kill_and_remove(calls: AsyncDriver, cgroup: CgroupPath) -> bool:
    if await calls.populated(cgroup):
        try:
            await calls.kill(cgroup)
        except ProcessesSurvive as exc:
            # Stuck in the kernel: left for the next start (the agent must still start).
            log.warning("stale_attempt_unkillable", cgroup=str(cgroup), error=str(exc))
            return False
    deadline = time.monotonic() + DRAIN_SECONDS
    while await calls.populated(cgroup):
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.05)
    await calls.remove(cgroup)
    return True


async def fence_stale(driver: CgroupDriver, ours: set[int]) -> list[int]:
    """Kill and remove every job cgroup whose job is not in ``ours``; return their job ids.

    Runs before the first claim, so every job cgroup is either a leftover attempt Postgres
    still gives this node (in ``ours``) or a stale one.
    """
    fenced = []
    calls = async_driver(driver)
    for job_id, cgroup in await calls.run(lambda: list(job_cgroups(driver))):
        if job_id in ours:
            continue
        populated = await calls.populated(cgroup)
        removed = await _kill_and_remove(calls, cgroup)
        log.warning(
            "stale_attempt_fenced" if populated else "stale_cgroup_removed",
            job_id=job_id,
            cgroup=str(cgroup),
            removed=removed,
        )
        fenced.append(job_id)
    return fenced


async def kill_all(driver: CgroupDriver, attempts: Iterable[Attempt]) -> list[int]:
    """Kill every attempt of ``attempts`` (this agent's, its lease is lost), all at once
    (the facade bounds the threads); return their job ids."""
    calls = async_driver(driver)
    running = list(attempts)

    async def kill(cgroup: CgroupPath, job_id: int) -> None:
        try:
            await calls.kill(cgroup)
        except Exception:
            log.exception("fence_kill_failed", job_id=job_id)

    async with anyio.create_task_group() as tg:
        for attempt in running:
            tg.start_soon(kill, attempt.cgroup, attempt.job.id)
    return [attempt.job.id for attempt in running]
