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
from scheduler.runtime.spec import ExitRecord

log = structlog.get_logger(__name__)


def monitor_pid(run_dir: Path) -> int | None:
    """The pid the attempt's monitor wrote at the head of its reserved exit record
    (``monitor_pid=N``), or in ``monitor.pid`` (run directories of earlier versions)."""
    identity = _monitor_identity(run_dir)
    return identity[0] if identity is not None else None


def _monitor_identity(run_dir: Path) -> tuple[int, int | None] | None:
    """(pid, start time in clock ticks or None) of the attempt's monitor, as it wrote them."""
    try:
        with (run_dir / RESERVE_FILE).open("rb") as reserve:
            head = reserve.read(128).split(b"\0", 1)[0]
    except OSError:
        head = b""
    fields = dict(line.partition(b"=")[::2] for line in head.split(b"\n") if b"=" in line)
    try:
        if b"monitor_pid" in fields:
            start = fields.get(b"monitor_start")
            return int(fields[b"monitor_pid"]), int(start) if start else None
        return int((run_dir / "monitor.pid").read_text().strip()), None
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces or parentheses); starttime is
    # field 22 of the line, the 20th after the name.
    return int(text.rpartition(")")[2].split()[19])


def live_monitor_pid(run_dir: Path) -> int | None:
    """The pid of this attempt's monitor if it is still alive (and really is that monitor)."""
    identity = _monitor_identity(run_dir)
    if identity is None:
        return None
    pid, start = identity
    if start:
        # A recycled pid has another start time.
        return pid if start_ticks(pid) == start else None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # Records of earlier versions: the run dir in the monitor's argv proves identity.
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
        # Where this version's monitor keeps its record; before it, the output directory.
        run_dirs = (runner.monitor_dir(job), run_dir_for(runs_dir, job.id, job.attempts))
        chain = await tenants.chain(job.tenant)
        cgroup = CgroupPath.for_job(chain, job.id)
        record = _first_record(run_dirs)
        if record is not None:
            log.info("recovered_exit", job_id=job.id, kind=record.kind)
            on_start(job.id)
            task_group.start_soon(
                _adopted, runner.finish(job, cgroup, record, timed_out=False), job.id, on_done
            )
            adopted.append(job.id)
            continue
        found = _live_monitor(run_dirs)
        if found is not None:
            pid, run_dir = found
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
        await send_lost(
            Completion(job, node, cgroup, outcome, usage, now, now, closing, run_dir=run_dirs[0])
        )
    return adopted


def _first_record(run_dirs: tuple[Path, ...]) -> ExitRecord | None:
    for run_dir in run_dirs:
        record = read_exit_record(run_dir)
        if record is not None:
            return record
    return None


def _live_monitor(run_dirs: tuple[Path, ...]) -> tuple[int, Path] | None:
    for run_dir in run_dirs:
        pid = live_monitor_pid(run_dir)
        if pid is not None:
            return pid, run_dir
    return None


async def _adopted(work: Awaitable[None], job_id: int, on_done: Callable[[int], None]) -> None:
    try:
        await work
    finally:
        on_done(job_id)
