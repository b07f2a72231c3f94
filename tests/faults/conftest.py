"""The fault suite's fixtures, and the table of its counts at the end of the pytest run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from scheduler.rundirs import parse_run_dir_name
from scheduler.runtime.identity import live_monitor_pid
from tests.agent_process import leftover_job_cgroups, start_serve, stop, wait_ready
from tests.conftest import SCRATCH, slow
from tests.faults.counts import RESULTS, Workload, table

# Every fault test's agents: short sampling periods, so that jobs of a second or two are
# billed in several rows, and a fast safety poll.
FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.05, "poll_interval": 0.5}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The agent's state directory, outside /tmp: jobs see a private /tmp, and they must
    reach the executions directory inside it (see :class:`Workload`)."""
    path = Path(tempfile.mkdtemp(prefix="sched-fault-", dir=SCRATCH))
    yield path
    if os.environ.get("SCHEDULER_KEEP_FAULT_STATE"):
        print(f"fault state kept in {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workload(state_dir: Path) -> Workload:
    return Workload(state_dir)


class Agents:
    """``scheduler serve`` processes of one test, each stopped at its end if still running."""

    def __init__(self, dsn: str, state_dir: Path, cgroup_root: str) -> None:
        self.dsn = dsn
        self.state_dir = state_dir
        self.cgroup_root = cgroup_root
        self.procs: list[subprocess.Popen[bytes]] = []

    def log(self, node: str) -> Path:
        return self.state_dir / f"{node}.log"

    async def start(
        self,
        node: str = "fault-node",
        *,
        state_dir: Path | None = None,
        cgroup_root: str | None = None,
        failpoints: str | None = None,
        dsn: str | None = None,
        lease: dict[str, float] | None = None,
        ready: bool = True,
        **settings: object,
    ) -> subprocess.Popen[bytes]:
        """Start an agent and wait until it is ready (its jobs recovered, claiming), unless
        ``ready`` is false (a failpoint may stop it before it says so)."""
        log = self.log(node)
        starts = log.read_text().count(f"scheduler: node {node} ready") if log.exists() else 0
        proc = start_serve(
            dsn or self.dsn,
            state_dir or self.state_dir,
            cgroup_root or self.cgroup_root,
            log,
            node=node,
            env={"SCHEDULER_FAILPOINTS": failpoints} if failpoints else None,
            **{**FAST, **(lease or {}), **settings},
        )
        self.procs.append(proc)
        if ready:
            await wait_ready(proc, log, starts + 1, node)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)


@pytest.fixture
async def agents(dsn: str, state_dir: Path, cgroup_root: str) -> AsyncIterator[Agents]:
    started = Agents(dsn, state_dir, cgroup_root)
    try:
        yield started
    finally:
        started.stop_all()


async def no_jobs_left(
    workload: Workload, monitors_dirs: list[Path], cgroup_roots: list[str]
) -> None:
    """Every attempt's monitor has ended and no job cgroup is left (the agents clean up);
    ``monitors_dirs``: the agents' runtime directories (``<state>/run`` by default)."""
    ids = list(workload.expected)
    with anyio.fail_after(slow(20)):
        while any(leftover_job_cgroups(root) for root in cgroup_roots) or any(
            live_monitor_pid(run_dir) is not None
            for runs in monitors_dirs
            if runs.is_dir()
            for run_dir in runs.iterdir()
            if (parse_run_dir_name(run_dir.name) or (0, 0))[0] in ids
        ):
            await anyio.sleep(0.05)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault counts (all 0 but recovered)")
    for line in table(RESULTS):
        terminalreporter.write_line(line)
