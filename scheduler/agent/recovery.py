"""Start-up recovery: attempts a previous run of this agent left behind.

Each running job has a monitor outside its pid namespace that records the exit in the state
directory, so the agent can die while jobs run. At start-up every attempt Postgres says this
node is running is either still running (its monitor is alive: adopt it), finished while the
agent was away (its exit record is there: record it), or gone without a trace (lost).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from anyio.abc import TaskGroup

from scheduler.agent.recorder import Completion
from scheduler.agent.runner import Runner
from scheduler.agent.tenants import TenantCgroups
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits, Usage
from scheduler.errors import ProcessesSurvive
from scheduler.jobs import Job, Outcome
from scheduler.rundirs import run_dir_for
from scheduler.runtime.identity import ended_or_running, live_monitor_pid, reserved_identity
from scheduler.runtime.records import mismatch
from scheduler.runtime.spec import ExitRecord

log = structlog.get_logger(__name__)


async def recover(
    jobs: list[Job],
    *,
    driver: CgroupDriver,
    tenants: TenantCgroups,
    runner: Runner,
    runs_dir: Path,
    node: str,
    task_group: TaskGroup,
    send_lost: Callable[[Completion], Awaitable[None]],
    on_start: Callable[[int], None],
    on_done: Callable[[int], None],
) -> list[int]:
    """Adopt or record every attempt left from before; return the ids it supervises or
    records. ``on_start`` is called for each before its task starts, ``on_done`` once its end
    was handed to the recorder (a fast end cannot come before its start)."""
    adopted: list[int] = []
    record_lost = functools.partial(
        _record_lost, runner=runner, driver=driver, node=node, send_lost=send_lost
    )
    for job in jobs:
        # Where this version's monitor keeps its record; before it, the output directory.
        run_dirs = (runner.monitor_dir(job), run_dir_for(runs_dir, job.id, job.attempts))
        chain = await tenants.chain(job.tenant)
        cgroup = CgroupPath.for_job(chain, job.id)
        found: ExitRecord | int | None = None
        run_dir = run_dirs[0]
        for candidate in run_dirs:
            found = _ours(job, candidate, runner)
            if found is not None:
                run_dir = candidate
                break
        if isinstance(found, ExitRecord):
            record = found
            log.info("recovered_exit", job_id=job.id, kind=record.kind)
            on_start(job.id)
            task_group.start_soon(
                _adopted, runner.finish(job, cgroup, record, timed_out=False), job.id, on_done
            )
            adopted.append(job.id)
            continue
        if found is not None:
            pid = found
            plan = await async_driver(driver).plan(cgroup, Limits())
            log.info("adopted_job", job_id=job.id, monitor_pid=pid)
            runner.adopt_metering(job, cgroup)
            on_start(job.id)
            task_group.start_soon(
                _adopted,
                runner.supervise(job, cgroup, plan, pid, run_dir, adopted=True),
                job.id,
                on_done,
            )
            adopted.append(job.id)
            continue
        calls = async_driver(driver)
        if await calls.exists(cgroup) and await calls.populated(cgroup):
            # Processes without a monitor cannot be supervised or billed to the end: stop them.
            try:
                await calls.kill(cgroup)
            except ProcessesSurvive:
                # Stuck in the kernel: the attempt stays running (its capacity reserved),
                # the kill is retried, and it is recorded lost once its cgroup is empty.
                on_start(job.id)
                lost = _lost_once_empty(job, cgroup, run_dirs[0], runner, record_lost)
                task_group.start_soon(_adopted, lost, job.id, on_done)
                adopted.append(job.id)
                continue
        await record_lost(job, cgroup, run_dirs[0])
    return adopted


def _ours(job: Job, run_dir: Path, runner: Runner) -> ExitRecord | int | None:
    """What ``run_dir`` holds of ``job``'s attempt (see ended_or_running): a record or a
    live monitor of another attempt (a state directory that outlived its database) is
    ignored, with one log line."""
    found = ended_or_running(run_dir)
    expected = runner.identity(job)
    if found is None or expected is None:
        return found
    owner = found.identity if isinstance(found, ExitRecord) else reserved_identity(run_dir)
    why = mismatch(expected, owner)
    if why is None:
        return found
    log.warning(
        "runtime_record_ignored",
        job_id=job.id,
        attempt=job.attempts,
        run_dir=str(run_dir),
        record="exit" if isinstance(found, ExitRecord) else "monitor",
        found=owner,
        expected=expected.token,
        reason=why,
    )
    if not isinstance(found, ExitRecord):
        return None
    # A foreign exit record may sit beside this attempt's own live monitor (its reservation).
    pid = live_monitor_pid(run_dir)
    if pid is None or mismatch(expected, reserved_identity(run_dir)) is not None:
        return None
    return pid


async def _lost_once_empty(
    job: Job,
    cgroup: CgroupPath,
    run_dir: Path,
    runner: Runner,
    record_lost: Callable[[Job, CgroupPath, Path], Awaitable[None]],
) -> None:
    await runner.kill_until_empty(job, cgroup)
    await record_lost(job, cgroup, run_dir)


async def _record_lost(
    job: Job,
    cgroup: CgroupPath,
    run_dir: Path,
    *,
    runner: Runner,
    driver: CgroupDriver,
    node: str,
    send_lost: Callable[[Completion], Awaitable[None]],
) -> None:
    calls = async_driver(driver)
    usage = await calls.read_usage(cgroup) if await calls.exists(cgroup) else Usage()
    usage, _ = runner.with_output(job, usage)  # its stdout/stderr are its writes too
    now = time.time_ns()
    outcome = Outcome(
        "lost",
        None,
        None,
        usage.oom_kills > 0,
        "the agent restarted and found neither the job's monitor nor its exit record",
        retry=job.attempts < job.max_attempts,
    )
    log.warning("job_lost", job_id=job.id)
    usage, closing = runner.closing_row(await runner.close_metering(job), usage, now, now)
    await send_lost(
        Completion(job, node, cgroup, outcome, usage, now, now, closing, run_dir=run_dir)
    )


async def _adopted(work: Awaitable[None], job_id: int, on_done: Callable[[int], None]) -> None:
    try:
        await work
    finally:
        on_done(job_id)
