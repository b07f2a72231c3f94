"""The shipped systemd units on a pure cgroup v2 host with systemd as PID 1 (`make test-v2`).

Installs deploy/systemd in either layout it supports, with the shipped environment file:

- two units (any systemd): scheduler.service runs the agent, scheduler-jobs.service holds the
  delegated cgroup the jobs run in;
- one unit (systemd >= 254): scheduler.service with the drop-in
  deploy/systemd/scheduler.service.d/one-unit.conf (``Delegate=yes``,
  ``DelegateSubgroup=supervisor``), the jobs in its own cgroup. Older systemd ignores
  ``DelegateSubgroup=``, and there the agent must refuse the layout at start.

Then runs jobs with cpu, memory, pids and io limits (read back from cpu.max, memory.max,
pids.max and io.max), freezes one, restarts the unit twice, stops and starts it once and
SIGKILLs the agent once, all with the jobs running, then lets them finish: each must end
once, succeeded, with usage rows that add up and a clean `scheduler billing check` run as an
operator would (from a shell, the settings read from the unit's environment file).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from scheduler.accounting.reconcile import check_job
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.cgroups.devices import io_devices
from scheduler.cgroups.fs import walk_deepest_first
from tests.conftest import SCRATCH, slow
from tests.integration.test_agent import submit, wait_final, wait_state

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.v2_systemd_host]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT_DIR = Path("/etc/systemd/system")
DROP_IN = Path("scheduler.service.d") / "one-unit.conf"
ENV_FILE = Path("/etc/scheduler/scheduler.env")
MOUNT = Path("/sys/fs/cgroup")
AGENT_CGROUP = MOUNT / "system.slice" / "scheduler.service"
HOLDER_CGROUP = MOUNT / "system.slice" / "scheduler-jobs.service"
SHIPPED_BINARY = "/opt/scheduler/.venv/bin/scheduler"
NODE = "v2-systemd-node"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Layout:
    """Where deploy/systemd puts the agent and the jobs."""

    name: str
    files: tuple[Path, ...]  # below deploy/systemd, installed below /etc/systemd/system
    holder: Path  # the delegated cgroup that enables the controllers for the jobs
    agent: Path  # the cgroup systemd starts the agent in
    root: str  # SCHEDULER_CGROUP_ROOT: the shipped one, or the one the drop-in asks for


def shipped_root() -> str:
    """SCHEDULER_CGROUP_ROOT as deploy/systemd/scheduler.env sets it."""
    for line in (DEPLOY / "scheduler.env").read_text().splitlines():
        if line.startswith("SCHEDULER_CGROUP_ROOT="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("deploy/systemd/scheduler.env sets no SCHEDULER_CGROUP_ROOT")


TWO_UNITS = Layout(
    "two-units",
    (Path("scheduler.service"), Path("scheduler-jobs.service")),
    HOLDER_CGROUP,
    AGENT_CGROUP,
    shipped_root(),
)
ONE_UNIT = Layout(
    "one-unit",
    (Path("scheduler.service"), DROP_IN),
    AGENT_CGROUP,
    AGENT_CGROUP / "supervisor",
    "system.slice/scheduler.service/jobs",
)
EVERY_FILE = (Path("scheduler.service"), Path("scheduler-jobs.service"), DROP_IN)


def run(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=slow(60), check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr}")
    return done.stdout.strip()


def systemd_version() -> int:
    """PID 1's systemd version, from ``systemctl --version`` ("systemd 252 (252.33-1~deb12u1)")."""
    match = re.match(r"systemd (\d+)", run("systemctl", "--version"))
    assert match, run("systemctl", "--version")
    return int(match.group(1))


def main_pid() -> int:
    return int(run("systemctl", "show", "-p", "MainPID", "--value", "scheduler.service"))


def journal(pid: int) -> str:
    return run("journalctl", f"_PID={pid}", "-o", "cat", "--no-pager", check=False)


def wait_agent_ready(previous: int) -> int:
    """Until a new main process of scheduler.service (not ``previous``) says it is ready;
    its pid. Fails at once if systemd gave up on the unit."""
    deadline = time.monotonic() + slow(90)
    while time.monotonic() < deadline:
        pid = main_pid()
        if pid not in (0, previous) and f"ready (cgroup driver v2, pid {pid})" in journal(pid):
            return pid
        state = run("systemctl", "show", "-p", "ActiveState", "--value", "scheduler.service")
        assert state != "failed", run("systemctl", "status", "scheduler.service", check=False)
        time.sleep(0.5)
    raise AssertionError(
        "scheduler.service not ready: " + run("systemctl", "status", "scheduler", check=False)
    )


def install(layout: Layout, dsn: str, state_dir: Path) -> None:
    binary = Path(sys.executable).parent / "scheduler"
    for name in layout.files:
        text = (DEPLOY / name).read_text().replace(SHIPPED_BINARY, str(binary))
        (UNIT_DIR / name).parent.mkdir(exist_ok=True)
        (UNIT_DIR / name).write_text(text)
    ENV_FILE.parent.mkdir(exist_ok=True)
    shipped = (DEPLOY / "scheduler.env").read_text().splitlines(keepends=True)
    ENV_FILE.write_text(
        "".join(line for line in shipped if not line.startswith("SCHEDULER_CGROUP_ROOT="))
        + f"SCHEDULER_CGROUP_ROOT={layout.root}\n"
        f"SCHEDULER_DATABASE_URL={dsn}\nSCHEDULER_STATE_DIR={state_dir}\n"
        f"SCHEDULER_NODE_NAME={NODE}\nSCHEDULER_HTTP_ADDR=127.0.0.1:0\n"
        "SCHEDULER_POLL_INTERVAL=0.5\nSCHEDULER_SAMPLE_INTERVAL=2\n"
    )
    run("systemctl", "daemon-reload")


@pytest.fixture
def installed(
    request: pytest.FixtureRequest, dsn: str, state_dir: Path
) -> Iterator[tuple[Layout, Path]]:
    """The layout's units and the environment file, installed; its cgroup root; everything
    they made removed afterwards. Refuses a host where scheduler units are already installed
    (not ours)."""
    layout: Layout = request.param
    for path in (*(UNIT_DIR / f for f in EVERY_FILE), ENV_FILE):
        if path.exists():
            pytest.fail(f"{path} exists: this test installs its own units (make test-v2)")
    install(layout, dsn, state_dir)
    units = ("scheduler.service", "scheduler-jobs.service")
    try:
        yield layout, MOUNT / layout.root
    finally:
        # Shown with a failure's report: what the agent and systemd said.
        print(run("journalctl", "-b", "-u", "scheduler*", "-n", "80", "--no-pager", check=False))
        run("systemctl", "stop", *units, check=False)
        if (MOUNT / layout.root).exists():
            open_driver(layout.root).remove_tree(CgroupPath(()))
        for directory in walk_deepest_first(layout.holder) if layout.holder.exists() else ():
            if directory != layout.holder:  # the supervisor leaf, empty once it stopped
                directory.rmdir()
        for name in EVERY_FILE:
            (UNIT_DIR / name).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (UNIT_DIR / DROP_IN).parent.rmdir()
        ENV_FILE.unlink(missing_ok=True)
        run("systemctl", "daemon-reload", check=False)
        run("systemctl", "reset-failed", *units, check=False)


def events(leaf: Path) -> dict[str, int]:
    """cgroup.events of ``leaf``; empty while the cgroup does not exist yet (the agent marks
    a job running at its claim, and its monitor makes the cgroup a moment later)."""
    try:
        text = (leaf / "cgroup.events").read_text()
    except FileNotFoundError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


def wait_events(leaf: Path, key: str, value: int) -> None:
    deadline = time.monotonic() + slow(30)
    while events(leaf).get(key) != value:
        assert time.monotonic() < deadline, f"{leaf}: {key} never became {value}"
        time.sleep(0.1)


@pytest.mark.parametrize("installed", [TWO_UNITS], ids=lambda x: x.name, indirect=True)
async def test_jobs_outlive_two_restarts_a_stop_and_a_kill_of_the_unit_and_are_billed_once(
    db: asyncpg.Connection, installed: tuple[Layout, Path], state_dir: Path
) -> None:
    await outlive_restarts_and_bill_once(db, *installed, state_dir)


@pytest.mark.parametrize("installed", [ONE_UNIT], ids=lambda x: x.name, indirect=True)
async def test_one_unit_with_a_delegate_subgroup_restarts_with_jobs_or_is_refused_before_254(
    db: asyncpg.Connection, installed: tuple[Layout, Path], state_dir: Path
) -> None:
    """systemd >= 254: the one-unit layout passes the same restarts as the two units.
    Older systemd ignores DelegateSubgroup= and starts the agent in the unit's own cgroup:
    the agent must refuse to start there, naming the remedy, and enable nothing."""
    layout, root = installed
    version = systemd_version()
    print(f"systemd {version}, layout {layout.name}")
    if version >= 254:
        await outlive_restarts_and_bill_once(db, layout, root, state_dir)
        return
    # Only what the journal gets from here on (the boot's journal has the other tests').
    shown = run("journalctl", "-n", "1", "--show-cursor", "-o", "cat", "--no-pager")
    cursor = shown.rsplit("-- cursor: ", 1)[1].strip()
    run("systemctl", "start", "scheduler.service")
    deadline = time.monotonic() + slow(90)
    said = ""
    while "could not restart while a job runs" not in said:
        assert time.monotonic() < deadline, said or "the agent said nothing"
        said = run(
            "journalctl",
            f"--after-cursor={cursor}",
            "-u",
            "scheduler.service",
            "-o",
            "cat",
            "--no-pager",
        )
        time.sleep(0.5)
    assert "DelegateSubgroup=supervisor" in said
    assert "system.slice/scheduler-jobs.service/jobs" in said
    assert "ready (cgroup driver v2" not in said
    run("systemctl", "stop", "scheduler.service")
    if AGENT_CGROUP.exists():  # refused before it changed anything
        assert (AGENT_CGROUP / "cgroup.subtree_control").read_text().strip() == ""
    assert not root.exists()


async def outlive_restarts_and_bill_once(
    db: asyncpg.Connection, layout: Layout, root: Path, state_dir: Path
) -> None:
    # Where the jobs (each tenant's own uid) look for the file that ends them: not /tmp or
    # /var/tmp, which every job gets a private tmpfs over (the test waited forever there).
    gate = Path(tempfile.mkdtemp(prefix="sched-v2-gate-", dir=SCRATCH))
    gate.chmod(0o755)
    try:
        run("systemctl", "start", "scheduler.service")
        pid = wait_agent_ready(0)
        # The cgroup systemd starts the agent in enables nothing for children (systemd can
        # start it there again); the delegated holder has no process of its own (two units:
        # its placeholder moved into its leaf) and enables the controllers for the jobs.
        assert (layout.agent / "cgroup.subtree_control").read_text().strip() == ""
        assert str(pid) in (layout.agent / "cgroup.procs").read_text().split()
        assert (layout.holder / "cgroup.procs").read_text().strip() == ""
        assert (layout.holder / "supervisor" / "cgroup.procs").read_text().strip()
        assert {"cpu", "memory", "pids", "io"} <= set(
            (layout.holder / "cgroup.subtree_control").read_text().split()
        )

        wait = f"while [ ! -e {gate}/go ]; do sleep 0.2; done; echo done"
        limited = await submit(
            db,
            ["sh", "-c", wait],
            cpu=Decimal("0.5"),
            memory_bytes=64 * MIB,
            pids_max=20,
            io_read_bps=4 * MIB,
            io_write_bps=2 * MIB,
        )
        # Half a core each: the VM's two cores admit all three at once.
        frozen = await submit(db, ["sh", "-c", wait], cpu=Decimal("0.5"))
        plain = await submit(db, ["sh", "-c", wait], cpu=Decimal("0.5"))
        ids = [limited, frozen, plain]
        for job in ids:
            await wait_state(db, job, "running", timeout=60)
        leaf = {job: root / "default" / f"job-{job}" for job in ids}
        for job in ids:  # 'running' is written at the claim; the process follows
            wait_events(leaf[job], "populated", 1)

        assert (leaf[limited] / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (leaf[limited] / "memory.max").read_text().strip() == str(64 * MIB)
        assert (leaf[limited] / "pids.max").read_text().strip() == "20"
        [device] = io_devices("", state_dir)
        io_max = (leaf[limited] / "io.max").read_text()
        assert f"{device} rbps={4 * MIB} wbps={2 * MIB}" in io_max, io_max

        await db.execute("UPDATE scheduler.jobs SET desired_state = 'frozen' WHERE id = $1", frozen)
        await wait_state(db, frozen, "frozen", timeout=30)
        wait_events(leaf[frozen], "frozen", 1)

        for _ in range(2):
            run("systemctl", "restart", "scheduler.service")
            pid = wait_agent_ready(pid)
        run("systemctl", "stop", "scheduler.service")
        for job in ids:  # `systemctl stop` stops the agent only
            assert events(leaf[job])["populated"] == 1
        run("systemctl", "start", "scheduler.service")
        pid = wait_agent_ready(pid)
        os.kill(pid, signal.SIGKILL)  # a crash: Restart=always brings it back
        pid = wait_agent_ready(pid)
        assert run("systemctl", "show", "-p", "NRestarts", "--value", "scheduler.service") == "1"

        for job in ids:
            assert events(leaf[job])["populated"] == 1
        assert events(leaf[frozen])["frozen"] == 1
        assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", frozen) == (
            "frozen"
        )
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'running' WHERE id = $1", frozen
        )
        await wait_state(db, frozen, "running", timeout=30)
        wait_events(leaf[frozen], "frozen", 0)

        (gate / "go").touch()
        rows = await wait_final(db, ids, timeout=120)
    finally:
        (gate / "go").unlink(missing_ok=True)
        gate.rmdir()
    for row in rows:
        assert (row["state"], row["attempts"], row["exit_code"]) == ("succeeded", 1, 0), dict(row)
        usage = await db.fetch(
            "SELECT * FROM scheduler.usage WHERE job_id = $1 ORDER BY seq", row["id"]
        )
        assert [r["final"] for r in usage].count(True) == 1
        assert check_job(dict(row.items()), [dict(r.items()) for r in usage]) == []
        assert row["cpu_seconds"] > 0

    # As an operator runs it: from a shell, the settings from the unit's environment file.
    check = subprocess.run(
        [str(Path(sys.executable).parent / "scheduler"), "billing", "check"],
        capture_output=True,
        text=True,
        timeout=slow(60),
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "checked 3 finished jobs: the books add up" in check.stderr
