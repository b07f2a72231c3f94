"""Runs one attempt of one job: cgroup plan, monitor, time limit, final counters."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import anyio
import structlog

from scheduler.accounting import periods
from scheduler.agent import grace
from scheduler.agent.attempts import Attempts
from scheduler.agent.isolation import Isolator
from scheduler.agent.recorder import Completion, Outbox
from scheduler.agent.sampler import Closed, Sampler, counters_of, covering, final_usage
from scheduler.agent.tenants import TenantCgroups
from scheduler.agent.unkillable import KILL_RETRY_FIRST_SECONDS, KILL_RETRY_MAX_SECONDS, Unkillable
from scheduler.backoff import Backoff
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath, LaunchPlan, Limits, Usage
from scheduler.cgroups.counters import final_read, parse_sample
from scheduler.errors import LaunchError, ProcessesSurvive, SchedulerError
from scheduler.jobs import Job, Outcome, decide_outcome
from scheduler.rundirs import run_dir_for
from scheduler.runtime.cgroupview import CgroupView
from scheduler.runtime.forkserver import ForkServer, UnansweredLaunch
from scheduler.runtime.identity import ended_or_running
from scheduler.runtime.images import ImageStore
from scheduler.runtime.launcher import read_exit_record, remove_run_dir, spawn, wait_monitor
from scheduler.runtime.output import OutputMeter
from scheduler.runtime.records import AttemptIdentity, clear_leftovers
from scheduler.runtime.sandbox import SandboxPolicy
from scheduler.runtime.spec import ExitRecord, LaunchSpec

log = structlog.get_logger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The longest grace between SIGTERM and the kill (at the time limit) a job gets: its own
# kill_grace_seconds up to this (the node's term_grace_seconds).
TERM_GRACE_SECONDS = 600.0
# Once the job's init has exited, the kernel kills the rest of its pid namespace; this bounds
# how long we wait for the cgroup to empty before killing it ourselves.
DRAIN_SECONDS = 2.0
# How long a launch the fork server left unanswered is looked for in its run directory.
UNANSWERED_SECONDS = 5.0


def job_env(job: Job) -> dict[str, str]:
    """The job's environment: what it asked for over a minimal default."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/tmp",  # noqa: S108 (the job has a private tmpfs there)
        "SCHEDULER_JOB_ID": str(job.id),
        "SCHEDULER_TENANT": job.tenant,
        "SCHEDULER_ATTEMPT": str(job.attempts),
    }
    env.update(job.env)
    # An array member's place is the database's, not something its env may override.
    if job.array_id is not None and job.array_index is not None:
        env["SCHEDULER_ARRAY_ID"] = str(job.array_id)
        env["SCHEDULER_ARRAY_INDEX"] = str(job.array_index)
    return env


def _exit_record(run_dir: Path) -> ExitRecord | None:
    """The monitor's record; an unreadable one counts as missing (the job fails, with a log)."""
    try:
        return read_exit_record(run_dir)
    except LaunchError:
        log.exception("exit_record_unreadable", run_dir=str(run_dir))
        return None


def _recorded_usage(driver: CgroupDriver, record: ExitRecord | None) -> Usage | None:
    """The final counters the monitor put into ``record`` (None if it did not, or they do
    not parse: then the agent reads the cgroup itself)."""
    if record is None or record.counters is None:
        return None
    try:
        return parse_sample(driver, record.counters).usage()
    except (ValueError, KeyError) as exc:
        log.warning("exit_record_counters_unreadable", error=str(exc))
        return None


async def _find_unanswered(run_dir: Path) -> int | ExitRecord | None:
    """After the fork server died with a launch unanswered: the monitor it may have forked
    (its pid, named at the head of its reserved record) or that monitor's exit record; None
    if neither shows within UNANSWERED_SECONDS (then no monitor ran: a forked one reserves
    its record before anything else, and records even its own start errors)."""
    deadline = time.monotonic() + UNANSWERED_SECONDS
    while True:
        try:
            found = ended_or_running(run_dir)
        except LaunchError:
            log.exception("exit_record_unreadable", run_dir=str(run_dir))
            return None
        if found is not None or time.monotonic() > deadline:
            return found
        await anyio.sleep(0.01)


def closing_peak(driver: CgroupDriver, usage: Usage, closed: Closed | None) -> int | None:
    """The highest memory of an attempt's closing period, None where the kernel cannot say.

    The sampler's kept-open peak file was reset at its last sweep: read through it, it tells
    the closing period's peak (on v2 the reset is seen through that open file only, so the
    monitor's final read shows the lifetime peak). On v1 the reset is the cgroup's own, so
    the final read tells it too; on v2 without a resettable peak it is unknown.
    """
    pending = closed.peak if closed is not None else 0
    reader = closed.reader if closed is not None else None
    if reader is not None and reader.resets_peak:
        try:
            return max(pending, reader.read().memory_peak_bytes)
        except OSError:
            pass  # the cgroup is gone: the final read's value is all there is
    if driver.name == "v1":
        return max(pending, usage.memory_peak_bytes)
    return None


class Runner:
    """Starts attempts and turns their ends into completions for the recorder."""

    def __init__(
        self,
        *,
        driver: CgroupDriver,
        tenants: TenantCgroups,
        monitor: Path,
        runs_dir: Path,
        node: str,
        completions: Outbox,
        monitors_dir: Path,
        fork_server: ForkServer | None = None,
        isolator: Isolator | None = None,
        attempts: Attempts | None = None,
        term_grace: float = TERM_GRACE_SECONDS,
        sampler: Sampler | None = None,
        node_fault: Callable[[], Awaitable[str | None]] | None = None,
        blocked: Callable[[], str | None] | None = None,
        unkillable: Unkillable | None = None,
        database: str | None = None,
        epoch: int | None = None,
        output_limit_bytes: int | None = None,
        output_reserve_bytes: int | None = None,
    ) -> None:
        self._isolator = isolator or Isolator(
            SandboxPolicy(), ImageStore(runs_dir.parent / "images")
        )
        # The controller steers the attempts registered here (freeze, thaw, cancel).
        self.attempts = attempts if attempts is not None else Attempts()
        self._term_grace = term_grace
        self._driver = driver
        self._tenants = tenants
        self._monitor = monitor
        self._fork_server = fork_server
        self._runs_dir = runs_dir
        self._monitors_dir = monitors_dir
        self._node = node
        self._completions = completions
        self._sampler = sampler
        self.unkillable = unkillable if unkillable is not None else Unkillable()
        # Who this agent's attempts are (runtime/records.py); None: records carry no identity.
        self._database = database
        self._epoch = epoch
        # The node's output limit (default and ceiling) and the free space job output leaves
        # on the state disk (runtime/output.py).
        self._output_limit = output_limit_bytes
        self._output_reserve = output_reserve_bytes
        self._cgroup_view = CgroupView()
        # Why this node cannot start jobs now (a fresh check of its state disk), if it cannot:
        # an attempt that failed to start then goes back to the queue (see _released).
        self.node_fault = node_fault
        # Why this node starts nothing now (its state disk, as last checked: the dispatcher
        # checks again after each claim), if it does not: a claimed attempt then goes back
        # to the queue untouched.
        self.blocked = blocked

    async def run(self, job: Job) -> None:
        """Run one claimed attempt to its end and hand its completion to the recorder."""
        structlog.contextvars.bind_contextvars(job_id=job.id, tenant=job.tenant)
        start_ns = time.time_ns()
        run_dir = self.monitor_dir(job)
        output_dir = run_dir_for(self._runs_dir, job.id, job.attempts)
        identity = self.identity(job)
        if self.blocked is not None and (reason := self.blocked()) is not None:
            await self._not_started(job, reason, start_ns)
            return
        # Two stats per launch (a thread hop costs more): another attempt's leftovers (a
        # reset database reissues ids) are looked at in a thread.
        if identity is not None and (
            os.path.lexists(run_dir) or os.path.lexists(output_dir)  # noqa: ASYNC240
        ):
            refused = await self._clear_leftovers(run_dir, output_dir, identity)
            if refused is not None:
                await self._start_failed(job, None, refused, start_ns, keep=True)
                return
        try:
            chain = await self._tenants.chain(job.tenant)
        except Exception as exc:
            log.exception("tenant_cgroup_failed")
            await self._start_failed(job, None, f"tenant cgroup: {exc}", start_ns)
            return
        cgroup = CgroupPath.for_job(chain, job.id)
        plan = await async_driver(self._driver).plan(
            cgroup,
            Limits(
                cpu_cores=float(job.cpu),
                memory_bytes=job.memory_bytes,
                pids_max=job.pids_max,
                io_read_bps=job.io_read_bps,
                io_write_bps=job.io_write_bps,
                io_devices=self._tenants.io_devices,
            ),
        )
        try:
            isolation = self._isolator.for_job(job, output_dir, self._tenants.identity(job.tenant))
        except SchedulerError as exc:
            log.warning("job_isolation_refused", error=str(exc))
            await self._start_failed(job, None, str(exc), start_ns)
            return
        view, view_hide = self._cgroup_view.entries(plan.dirs)
        spec = LaunchSpec(
            job_id=job.id,
            attempt=job.attempts,
            argv=job.argv,
            env=job_env(job),
            cwd=job.cwd,
            hostname=f"job-{job.id}",
            run_dir=run_dir,
            output_dir=output_dir,
            plan=plan,
            credentials=isolation.credentials,
            host_network=isolation.host_network,
            layers=isolation.layers,
            rootfs_dir=isolation.rootfs_dir,
            final_read=final_read(self._driver, cgroup),
            identity=identity.token if identity is not None else None,
            output_limit_bytes=self.output_limit(job),
            output_bps=job.io_write_bps,
            output_reserve_bytes=self._output_reserve,
            cgroup_view=view,
            cgroup_hide=view_hide,
            seccomp=isolation.seccomp,
        )
        output = OutputMeter(output_dir, spec.output_limit_bytes)
        launched_ns = time.time_ns()
        pidfd: int | None = None
        try:
            if self._fork_server is not None:
                pid, pidfd = await self._fork_server.launch(spec)
            else:
                # posix_spawn blocks its caller until the monitor's exec (about 1-2 ms): in a
                # worker thread, launches overlap and the event loop keeps serving.
                pid = await anyio.to_thread.run_sync(spawn, self._monitor, spec)
        except UnansweredLaunch as exc:
            log.warning("launch_unanswered", error=str(exc))
            found = await _find_unanswered(run_dir)
            if found is None:
                await self._start_failed(job, cgroup, f"cannot start the monitor: {exc}", start_ns)
                return
            if self._sampler is not None:
                self._sampler.register(job, cgroup, launched_ns, output)
            if isinstance(found, ExitRecord):
                await self.finish(job, cgroup, found, timed_out=False)
                return
            log.info("launch_found", monitor_pid=found)
            await self.supervise(job, cgroup, plan, found, run_dir)
            return
        except (OSError, SchedulerError) as exc:
            log.exception("monitor_spawn_failed")
            await self._start_failed(job, cgroup, f"cannot start the monitor: {exc}", start_ns)
            return
        log.debug("job_started", monitor_pid=pid, run_dir=str(run_dir))
        if self._sampler is not None:
            self._sampler.register(job, cgroup, launched_ns, output)
        await self.supervise(job, cgroup, plan, pid, run_dir, pidfd=pidfd)

    async def _clear_leftovers(
        self, run_dir: Path, output_dir: Path, identity: AttemptIdentity
    ) -> str | None:
        """Clear another attempt's records from this attempt's directories; why the launch
        is refused instead, if it is (logged loudly)."""
        try:
            found = await anyio.to_thread.run_sync(clear_leftovers, run_dir, output_dir, identity)
        except (OSError, LaunchError) as exc:
            refused = f"not launched: {exc}"
        else:
            log.warning(
                "stale_run_dir_cleared",
                run_dir=str(run_dir),
                output_dir=str(output_dir),
                found=found,
                attempt_identity=identity.token,
            )
            return None
        log.error("run_dir_refused", run_dir=str(run_dir), error=refused)
        return refused

    def identity(self, job: Job) -> AttemptIdentity | None:
        """Whose records ``job``'s current attempt writes (None when this runner was made
        without the database's identity: then they carry none)."""
        if self._database is None or self._epoch is None:
            return None
        return AttemptIdentity.of(self._database, self._epoch, job)

    def output_limit(self, job: Job) -> int | None:
        """The job's output limit: the smallest of the node's, its tenant chain's and its own
        (None: none applies). The tenant's chain is loaded (``tenants.chain``) by then."""
        tenant = self._tenants.output_limit(job.tenant)
        values = [v for v in (self._output_limit, tenant, job.output_limit_bytes) if v is not None]
        return min(values) if values else None

    def output_meter(self, job: Job) -> OutputMeter:
        """The kept output of ``job``'s current attempt."""
        directory = run_dir_for(self._runs_dir, job.id, job.attempts)
        return OutputMeter(directory, self.output_limit(job))

    def with_output(self, job: Job, usage: Usage) -> tuple[Usage, str | None]:
        """``usage`` with the attempt's kept output added to its written bytes, and why the
        rest of its output was dropped (None: nothing was)."""
        try:
            end = self.output_meter(job).end()
        except OSError:
            log.exception("job_output_unreadable")
            return usage, None
        if end.dropped is not None:
            log.warning("job_output_truncated", reason=end.dropped, kept_bytes=end.kept_bytes)
        if not end.kept_bytes:
            return usage, end.dropped
        return replace(usage, io_write_bytes=usage.io_write_bytes + end.kept_bytes), end.dropped

    def monitor_dir(self, job: Job) -> Path:
        """Where the monitor of ``job``'s current attempt keeps its pid and exit record."""
        return run_dir_for(self._monitors_dir, job.id, job.attempts)

    async def supervise(
        self,
        job: Job,
        cgroup: CgroupPath,
        plan: LaunchPlan,
        pid: int,
        run_dir: Path,
        *,
        pidfd: int | None = None,
        adopted: bool = False,
    ) -> None:
        """Wait for the monitor (enforcing the time limit), then read the final counters.

        The time limit counts running time only: the attempt's clock is paused by the
        controller while the job is frozen. ``pidfd`` (the fork server's, for a monitor that
        is not our child) is closed here. ``adopted``: the monitor was started by a previous
        run of the agent.
        """
        attempt = self.attempts.start(
            job,
            cgroup,
            adopted=adopted,
            procs=plan.procs[0] if plan.procs else None,
            monitor_dir=run_dir,
        )
        try:
            timed_out = False
            limit = float(job.timeout_seconds) if job.timeout_seconds is not None else None
            if (
                adopted
                and limit is not None
                and job.desired_state != "cancelled"
                and grace.read_term(run_dir) is not None
            ):
                # Its time limit was reached before the restart (the SIGTERM went out): its
                # grace goes on from then, not after a whole new limit.
                limit = 0.0
            if limit is None:
                await wait_monitor(pid, pidfd)
            else:
                async with anyio.create_task_group() as tg:

                    async def monitor_ended() -> None:
                        await wait_monitor(pid, pidfd)
                        tg.cancel_scope.cancel()

                    tg.start_soon(monitor_ended)
                    await attempt.clock.wait_used(limit)
                    tg.cancel_scope.cancel()
            if limit is not None and _exit_record(run_dir) is None:
                timed_out = not attempt.cancelled
                # The job's grace, capped by the node's; none for a frozen job, which would
                # act on SIGTERM only once thawed (agent/grace.py).
                term_grace = min(float(job.kill_grace_seconds), self._term_grace)
                if attempt.frozen:
                    term_grace = 0.0
                log.info("job_timed_out", timeout_seconds=limit, grace_seconds=term_grace)
                if term_grace > 0:
                    term_ns = await anyio.to_thread.run_sync(
                        grace.terminate, attempt.procs, run_dir
                    )
                    attempt.term_ns = term_ns
                    with anyio.move_on_after(max(0.0, grace.remaining(term_ns, term_grace))):
                        await wait_monitor(pid, pidfd)
                await self.kill_until_empty(job, cgroup)
                await wait_monitor(pid, pidfd)
            await self.finish(
                job,
                cgroup,
                _exit_record(run_dir),
                timed_out=timed_out,
                cancelled=attempt.cancelled,
            )
        finally:
            self.attempts.end(job.id)
            self.unkillable.ended(job)  # a cancel's kill may have found it stuck
            if pidfd is not None:
                os.close(pidfd)

    async def finish(
        self,
        job: Job,
        cgroup: CgroupPath,
        record: ExitRecord | None,
        *,
        timed_out: bool,
        cancelled: bool = False,
    ) -> None:
        """Take the final counters (the monitor's, or read once the cgroup is empty),
        decide the outcome, hand it on."""
        recorded = _recorded_usage(self._driver, record)
        if recorded is None:
            await self._drain(job, cgroup)
        # Stop the sampler first: no period may be written after the closing one is computed.
        closed = await self._sampler.close(job) if self._sampler is not None else None
        mark = closed.mark if closed is not None else None
        peak: int | None = None
        try:
            usage = (
                recorded
                if recorded is not None
                else await final_usage(self._driver, cgroup, closed.reader if closed else None)
            )
            peak = closing_peak(self._driver, usage, closed)
        except Exception:
            log.exception("final_usage_read_failed")
            usage = Usage()
        finally:
            if closed is not None and closed.reader is not None:
                closed.reader.close()
        usage, dropped = self.with_output(job, usage)
        outcome = decide_outcome(
            record,
            usage,
            timed_out=timed_out,
            cancelled=cancelled,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
        )
        if dropped is not None:
            note = f"output truncated: {dropped}; the rest of stdout/stderr was dropped"
            outcome = replace(
                outcome, error=note if outcome.error is None else f"{outcome.error}; {note}"
            )
        if job.image is not None:  # only a job on an image has a writable layer to remove
            await self._isolator.release(
                run_dir_for(self._runs_dir, job.id, job.attempts),
                succeeded=outcome.state == "succeeded",
            )
        now = time.time_ns()
        start_ns = record.start_ns if record else now
        end_ns = record.end_ns if record else now
        end_ns = max(start_ns, end_ns)
        usage, closing = self.closing_row(mark, usage, start_ns, end_ns, peak)
        release = None
        if record is None or record.kind == "start_error":
            release = await self._released(job)
        await self._completions.send(
            Completion(
                job,
                self._node,
                cgroup,
                outcome,
                usage,
                start_ns,
                end_ns,
                closing,
                release,
                self.monitor_dir(job),
            )
        )

    @staticmethod
    def closing_row(
        mark: periods.Mark | None,
        usage: Usage,
        exec_ns: int,
        end_ns: int,
        period_peak: int | None = None,
    ) -> tuple[Usage, periods.Period | None]:
        """The totals to record and the closing usage row (the final counters minus what the
        sampler already billed). The totals never fall below what the rows already billed (a
        failed final read reads zeros), so that the rows always sum to them.
        ``period_peak``: the memory peak since the last row (see :func:`closing_peak`)."""
        if mark is None:
            return usage, None
        usage = covering(usage, mark)
        if period_peak is not None and period_peak > usage.memory_peak_bytes:
            usage = replace(usage, memory_peak_bytes=period_peak)  # reads not kept in a row
        closing = periods.close(
            mark,
            exec_ns=exec_ns,
            end_ns=end_ns,
            counters=counters_of(usage),
            memory_bytes=usage.memory_current_bytes,
            period_peak=period_peak,
        )
        return usage, closing

    async def close_metering(self, job: Job) -> periods.Mark | None:
        """Stop sampling ``job`` (for attempts that end without :meth:`finish`)."""
        if self._sampler is None:
            return None
        closed = await self._sampler.close(job)
        if closed.reader is not None:
            closed.reader.close()
        return closed.mark

    def adopt_metering(self, job: Job, cgroup: CgroupPath) -> None:
        """Resume sampling an attempt adopted at start-up, from its committed rows."""
        if self._sampler is not None:
            self._sampler.adopt(job, cgroup, self.output_meter(job))

    async def _drain(self, job: Job, cgroup: CgroupPath) -> None:
        """Wait until no process is left in the cgroup; kill stragglers after a bound."""
        deadline = time.monotonic() + DRAIN_SECONDS
        backoff = Backoff(0.0005, 0.05)
        while await async_driver(self._driver).populated(cgroup):
            if time.monotonic() > deadline:
                log.warning("job_cgroup_not_empty_killing")
                await self.kill_until_empty(job, cgroup)
                deadline = time.monotonic() + DRAIN_SECONDS
            await anyio.sleep(backoff.next())

    async def kill_until_empty(self, job: Job, cgroup: CgroupPath) -> None:
        """Kill the attempt's cgroup until it is empty, however long its processes resist.

        A process stuck in the kernel (throttled writeback, a hung mount) acts on SIGKILL
        only when it leaves it: the attempt then stays running (its processes still hold
        their share of the node), the kill is retried with backoff, and the registry makes
        it visible; the end is recorded by the caller once the cgroup is empty."""
        backoff = Backoff(KILL_RETRY_FIRST_SECONDS, KILL_RETRY_MAX_SECONDS)
        try:
            while True:
                try:
                    await async_driver(self._driver).kill(cgroup)
                except ProcessesSurvive as exc:
                    await self.unkillable.survived(job, exc.pids, str(exc))
                else:
                    return
                await anyio.sleep(backoff.next())
        finally:
            # The sampler stays quiet for the job until its end closes the metering.
            self.unkillable.ended(job)

    async def _start_failed(
        self, job: Job, cgroup: CgroupPath | None, error: str, start_ns: int, *, keep: bool = False
    ) -> None:
        """Record an attempt that never reached the monitor as failed, with the reason.
        ``keep``: its directories hold another attempt's records, which stay."""
        record, outcome = _not_run(job, error, start_ns)
        release = await self._released(job) if cgroup is not None else None
        await self._completions.send(
            Completion(
                job,
                self._node,
                cgroup,
                outcome,
                Usage(),
                start_ns,
                record.end_ns,
                None,
                release,
                None if keep else self.monitor_dir(job),
            )
        )

    async def _not_started(self, job: Job, reason: str, start_ns: int) -> None:
        """Send an attempt claimed while this node cannot start jobs back to the queue,
        uncounted: nothing was made for it (no directory, no cgroup)."""
        record, outcome = _not_run(job, reason, start_ns)
        release = f"not started on node {self._node}: {reason}"
        await self._completions.send(
            Completion(
                job, self._node, None, outcome, Usage(), start_ns, record.end_ns, None, release
            )
        )

    async def _released(self, job: Job) -> str | None:
        """Why an attempt that never ran its command should go back to the queue uncounted
        (this node's state disk is full), or None. Its run directory is removed then, so that
        the attempt number can start afresh (here or on another node)."""
        if self.node_fault is None:
            return None
        reason = await self.node_fault()
        if reason is None:
            return None
        run_dir = run_dir_for(self._runs_dir, job.id, job.attempts)
        monitor_dir = self.monitor_dir(job)

        def remove_both() -> None:
            remove_run_dir(run_dir)
            remove_run_dir(monitor_dir)

        try:
            await anyio.to_thread.run_sync(remove_both)  # one thread hop for both
        except OSError:
            log.exception("run_dir_remove_failed", run_dir=str(run_dir))
            return None
        return f"not started on node {self._node}: {reason}"


def _not_run(job: Job, reason: str, start_ns: int) -> tuple[ExitRecord, Outcome]:
    """The exit record and outcome of an attempt whose command never ran (``reason``)."""
    record = ExitRecord("start_error", None, None, reason, start_ns, time.time_ns(), 0, 0, 0)
    outcome = decide_outcome(
        record,
        Usage(),
        timed_out=False,
        cancelled=False,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
    )
    return record, outcome
