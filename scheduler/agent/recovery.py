"""Start-up recovery: attempts a previous run of this agent left behind.

Each running job has a monitor outside its pid namespace that records the exit in the state
directory, so the agent can die while jobs run. At start-up every attempt Postgres says this
node is running is either still running (its monitor is alive: adopt it), finished while the
agent was away (its exit record is there: record it), or gone without a trace (lost).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from anyio.abc import TaskGroup

from scheduler.agent.recorder import Completion
from scheduler.agent.runner import Runner, run_dir_for
from scheduler.agent.tenants import TenantCgroups
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits, Usage
from scheduler.jobs import Job, Outcome
from scheduler.runtime.identity import ended_or_running
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
    for job in jobs:
        # Where this version's monitor keeps its record; before it, the output directory.
        run_dirs = (runner.monitor_dir(job), run_dir_for(runs_dir, job.id, job.attempts))
        chain = await tenants.chain(job.tenant)
        cgroup = CgroupPath.for_job(chain, job.id)
        found: ExitRecord | int | None = None
        run_dir = run_dirs[0]
        for candidate in run_dirs:
            found = ended_or_running(candidate)
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
            plan = driver.plan(cgroup, Limits())
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
        if driver.exists(cgroup) and driver.populated(cgroup):
            # Processes without a monitor cannot be supervised or billed to the end: stop them.
            driver.kill(cgroup)
        usage = driver.read_usage(cgroup) if driver.exists(cgroup) else Usage()
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
            Completion(job, node, cgroup, outcome, usage, now, now, closing, run_dir=run_dirs[0])
        )
    return adopted


async def _adopted(work: Awaitable[None], job_id: int, on_done: Callable[[int], None]) -> None:
    try:
        await work
    finally:
        on_done(job_id)
