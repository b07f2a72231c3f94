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
from scheduler.runtime.launcher import RESERVE_FILE, read_exit_record

log = structlog.get_logger(__name__)


def monitor_pid(run_dir: Path) -> int | None:
    """The pid the attempt's monitor wrote on the first line of its reserved exit record
    (``monitor_pid=N``), or in ``monitor.pid`` (run directories of earlier versions)."""
    try:
        with (run_dir / RESERVE_FILE).open("rb") as reserve:
            line = reserve.read(64).split(b"\n", 1)[0]
    except OSError:
        line = b""
    key, _, value = line.partition(b"=")
    try:
        if key == b"monitor_pid":
            return int(value)
        return int((run_dir / "monitor.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def live_monitor_pid(run_dir: Path) -> int | None:
    """The pid of this attempt's monitor if it is still alive (and really is that monitor)."""
    pid = monitor_pid(run_dir)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A recycled pid belongs to some other process: the run dir in its argv proves identity.
    return pid if str(run_dir).encode() in cmdline.split(b"\0") else None


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
        run_dir = run_dir_for(runs_dir, job.id, job.attempts)
        chain = await tenants.chain(job.tenant)
        cgroup = CgroupPath.for_job(chain, job.id)
        record = read_exit_record(run_dir)
        if record is not None:
            log.info("recovered_exit", job_id=job.id, kind=record.kind)
            on_start(job.id)
            task_group.start_soon(
                _adopted, runner.finish(job, cgroup, record, timed_out=False), job.id, on_done
            )
            adopted.append(job.id)
            continue
        pid = live_monitor_pid(run_dir)
        if pid is not None:
            plan = driver.plan(cgroup, Limits())
            log.info("adopted_job", job_id=job.id, monitor_pid=pid)
            runner.adopt_metering(job, cgroup)
            on_start(job.id)
            task_group.start_soon(
                _adopted, runner.supervise(job, cgroup, plan, pid, run_dir), job.id, on_done
            )
            adopted.append(job.id)
            continue
        if driver.exists(cgroup) and driver.populated(cgroup):
            # Processes without a monitor cannot be supervised or billed to the end: stop them.
            driver.kill(cgroup)
        usage = driver.read_usage(cgroup) if driver.exists(cgroup) else Usage()
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
        await send_lost(Completion(job, node, cgroup, outcome, usage, now, now, closing))
    return adopted


async def _adopted(work: Awaitable[None], job_id: int, on_done: Callable[[int], None]) -> None:
    try:
        await work
    finally:
        on_done(job_id)
