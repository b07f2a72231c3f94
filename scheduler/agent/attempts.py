"""The attempts running on this node, shared by the runner (which starts and ends them) and
the controller (which freezes, thaws and cancels them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from scheduler.backoff import Backoff
from scheduler.cgroups.base import CgroupPath
from scheduler.jobs import Job


class RunClock:
    """Running time of one attempt: time spent frozen does not count (Slurm's suspend).

    ``changed`` is set whenever the clock is paused or resumed, so a waiter computing a
    deadline from :meth:`running_seconds` can recompute it.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._used = 0.0
        self._since: float | None = now()
        self._changed: anyio.Event | None = None

    @property
    def changed(self) -> anyio.Event:
        """Set at the next pause or resume. Made on first use: only attempts with a time limit
        wait on it, and making an anyio.Event (a backend lookup each time) is not free."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    @property
    def paused(self) -> bool:
        return self._since is None

    def running_seconds(self) -> float:
        """Seconds the attempt has been running (not frozen) so far."""
        if self._since is None:
            return self._used
        return self._used + (self._now() - self._since)

    def pause(self) -> None:
        """Stop counting (the attempt is frozen); a second pause is a no-op."""
        if self._since is not None:
            self._used += self._now() - self._since
            self._since = None
            self._signal()

    def resume(self) -> None:
        """Count again (the attempt was thawed); resuming a running clock is a no-op."""
        if self._since is None:
            self._since = self._now()
            self._signal()

    def _signal(self) -> None:
        # Wake whoever took the current event; the next reader of ``changed`` gets a new one.
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_used(self, limit: float) -> None:
        """Return once the attempt has been running for ``limit`` seconds."""
        while True:
            changed = self.changed
            if self.paused:
                await changed.wait()
                continue
            left = limit - self.running_seconds()
            if left <= 0:
                return
            with anyio.move_on_after(left):
                await changed.wait()


@dataclass
class Attempt:
    """One running attempt as the controller sees it.

    ``frozen_self`` is the job's own freeze (desired_state='frozen'); ``frozen_by_tenant`` is
    a freeze of its tenant or an ancestor. The two are kept apart so that thawing a tenant
    leaves a job frozen on its own frozen; the job's state shows 'frozen' in either case.
    """

    job: Job
    cgroup: CgroupPath
    clock: RunClock = field(default_factory=RunClock)
    cancelled: bool = False
    frozen_self: bool = False
    frozen_by_tenant: bool = False
    # What the state column was last set to by this agent ('running' at claim).
    recorded_state: str = "running"
    # False until the controller has applied the desired state once without trusting the
    # flags above (an adopted attempt may have been left frozen by the previous agent). An
    # attempt this agent launched starts verified: its cgroup is new, made unfrozen by its
    # monitor (a frozen tenant holds it through frozen_by_tenant, not its own cgroup).
    verified: bool = False
    # A cancel's kill left processes behind: not tried again before kill_after (monotonic),
    # the wait growing each time (agent/unkillable.py).
    kill_after: float = 0.0
    kill_backoff: Backoff | None = None
    # Graceful stop (agent/grace.py): the job's cgroup.procs file and monitor directory, its
    # grace as last read (capped by the node's), when its SIGTERM went out (wall-clock ns),
    # and when the controller's loop is to wake to kill it (monotonic; None: no deadline).
    procs: str | None = None
    monitor_dir: Path | None = None
    kill_grace: float = 0.0
    term_ns: int | None = None
    kill_at: float | None = None

    @property
    def frozen(self) -> bool:
        return self.frozen_self or self.frozen_by_tenant


class Attempts:
    """The registry: job id -> running attempt; ``on_start`` is told of each new one."""

    def __init__(self) -> None:
        self._by_id: dict[int, Attempt] = {}
        self.on_start: Callable[[Attempt], None] = lambda _attempt: None

    def start(
        self,
        job: Job,
        cgroup: CgroupPath,
        *,
        adopted: bool = False,
        procs: str | None = None,
        monitor_dir: Path | None = None,
    ) -> Attempt:
        """Register an attempt whose monitor was started (by a previous agent: ``adopted``)."""
        attempt = Attempt(job, cgroup, verified=not adopted, procs=procs, monitor_dir=monitor_dir)
        self._by_id[job.id] = attempt
        self.on_start(attempt)
        return attempt

    def end(self, job_id: int) -> None:
        """Forget an attempt (its completion is on the way to the recorder)."""
        self._by_id.pop(job_id, None)

    def get(self, job_id: int) -> Attempt | None:
        return self._by_id.get(job_id)

    def all(self) -> list[Attempt]:
        return list(self._by_id.values())
