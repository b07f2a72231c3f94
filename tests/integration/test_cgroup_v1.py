"""The v1 driver against the real kernel of a v1 or hybrid host.

Every test works under its own root ``cgtest-<uuid8>`` in every hierarchy (and the cgroup2
mirror); the ``env`` fixture's finalizer thaws, kills the processes the test started and
removes that root everywhere, without going through the driver, even when a test failed.
Plans are executed in Python here (mkdir, writes, pid into every procs file), standing in for
the C monitor; each process waits on a pipe until it is inside its cgroups before it execs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scheduler.cgroups.base import CgroupPath, LaunchPlan, Limits
from scheduler.cgroups.detect import detect_layout, open_driver
from scheduler.cgroups.parse import Layout, parse_freezer_state, parse_limit
from scheduler.cgroups.v1 import V1Driver
from scheduler.errors import CgroupError

pytestmark = [
    pytest.mark.root,
    pytest.mark.v1_host,  # deselected on a pure v2 host (make test-v2)
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
]

MIB = 1024 * 1024
BUSY = ("sh", "-c", "while :; do :; done")
TENANT = CgroupPath(("acme",))
JOB = CgroupPath(("acme", "job-1"))
NEEDED = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")


def proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def read(path: Path) -> str:
    return path.read_text().strip()


def force_cleanup(tops: list[Path]) -> None:
    """Thaw, SIGKILL and rmdir everything under the test's own root directories.

    Each step runs over every hierarchy before the next: a task frozen in the freezer
    hierarchy keeps every other hierarchy busy until it is thawed and has died.
    """
    nodes = [Path(d) for top in tops if top.is_dir() for d, _, _ in os.walk(top, topdown=False)]
    for node in nodes:
        for file, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            if (node / file).exists():
                (node / file).write_text(value)
    for node in nodes:
        for pid in (node / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    failures = []
    for node in nodes:
        deadline = time.monotonic() + 5
        while True:
            try:
                node.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    failures.append(f"{node}: {exc}")
                    break
                time.sleep(0.02)
    assert not failures, f"cleanup failed: {failures}"


@dataclass
class Env:
    root: str
    layout: Layout
    driver: V1Driver
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def tops(self) -> list[Path]:
        """The root directory in every hierarchy this test may have touched."""
        mounts = {Path(m) for c, m in self.layout.v1.items() if c in NEEDED}
        if self.layout.unified:
            mounts.add(Path(self.layout.unified))
        return [m / self.root for m in sorted(mounts)]

    def run_plan(self, plan: LaunchPlan) -> None:
        for directory in plan.mkdirs:
            os.mkdir(directory, 0o755)
        for file, value in plan.writes:
            Path(file).write_text(value)

    def start(self, plan: LaunchPlan, *argv: str) -> subprocess.Popen[bytes]:
        """Create the plan's cgroup and run ``argv`` inside it from its first instruction."""
        self.run_plan(plan)
        proc = subprocess.Popen(
            ["sh", "-c", 'read _ && exec "$@"', "sh", *argv], stdin=subprocess.PIPE
        )
        self.started.append(proc)
        for procs in plan.procs:
            Path(procs).write_text(str(proc.pid))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        return proc


@pytest.fixture
def env() -> Iterator[Env]:
    layout = detect_layout()
    if layout.mode == "v2":
        pytest.skip("pure cgroup v2 host: no v1 hierarchies")
    missing = [c for c in NEEDED if c not in layout.v1]
    if missing:
        pytest.skip(f"v1 controllers not mounted: {missing}")
    root = f"cgtest-{uuid.uuid4().hex[:8]}"
    driver = open_driver(root, layout=layout)
    assert isinstance(driver, V1Driver)
    environment = Env(root, layout, driver)
    try:
        yield environment
    finally:
        force_cleanup(environment.tops())
        for proc in environment.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for top in environment.tops():
            assert not top.exists(), f"cleanup left {top}"


def cpu_ns_over(env: Env, path: CgroupPath, seconds: float) -> int:
    before = env.driver.read_usage(path).cpu_ns
    time.sleep(seconds)
    return env.driver.read_usage(path).cpu_ns - before


# -- limits ----------------------------------------------------------------------------------


def test_limits_are_written_to_the_real_files(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits(cpu_cores=1.5, memory_bytes=256 * MIB, pids_max=100, weight=200))
    cpu = driver.directory("cpu", TENANT)
    memory = driver.directory("memory", TENANT)
    assert read(cpu / "cpu.cfs_quota_us") == "150000"
    assert read(cpu / "cpu.shares") == "2048"
    assert parse_limit(read(memory / "memory.limit_in_bytes")) == 256 * MIB
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert parse_limit(read(memory / "memory.memsw.limit_in_bytes")) == 256 * MIB
    assert read(driver.directory("pids", TENANT) / "pids.max") == "100"

    plan = driver.plan(JOB, Limits(cpu_cores=0.5, memory_bytes=64 * MIB, pids_max=16, weight=50))
    env.run_plan(plan)
    assert all(Path(d).is_dir() for d in plan.dirs)
    assert len(plan.dirs) == len(env.tops())  # every hierarchy, the cgroup2 mirror included
    job_cpu = driver.directory("cpu", JOB)
    job_memory = driver.directory("memory", JOB)
    assert read(job_cpu / "cpu.cfs_period_us") == "100000"
    assert read(job_cpu / "cpu.cfs_quota_us") == "50000"
    assert read(job_cpu / "cpu.shares") == "512"
    assert parse_limit(read(job_memory / "memory.limit_in_bytes")) == 64 * MIB
    if (job_memory / "memory.memsw.limit_in_bytes").exists():
        assert parse_limit(read(job_memory / "memory.memsw.limit_in_bytes")) == 64 * MIB
    assert read(driver.directory("pids", JOB) / "pids.max") == "16"


def test_job_quota_above_the_tenant_is_clamped_not_refused(env: Env) -> None:
    # v1 answers EINVAL to a child quota above its parent's; the plan clamps instead.
    env.driver.ensure(TENANT, Limits(cpu_cores=0.5))
    plan = env.driver.plan(JOB, Limits(cpu_cores=2.0))
    env.run_plan(plan)
    assert read(env.driver.directory("cpu", JOB) / "cpu.cfs_quota_us") == "50000"


def test_ensure_raises_and_drops_limits(env: Env) -> None:
    driver = env.driver
    memory = driver.directory("memory", TENANT)
    driver.ensure(TENANT, Limits(memory_bytes=64 * MIB, cpu_cores=1.0, pids_max=10))
    # Raising needs memsw first (limit_in_bytes may not exceed it): the driver orders it.
    driver.ensure(TENANT, Limits(memory_bytes=512 * MIB, cpu_cores=1.0, pids_max=10))
    assert parse_limit(read(memory / "memory.limit_in_bytes")) == 512 * MIB
    driver.ensure(TENANT, Limits())
    assert parse_limit(read(memory / "memory.limit_in_bytes")) is None
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert parse_limit(read(memory / "memory.memsw.limit_in_bytes")) is None
    assert parse_limit(read(driver.directory("cpu", TENANT) / "cpu.cfs_quota_us")) is None
    assert read(driver.directory("cpu", TENANT) / "cpu.shares") == "1024"
    assert read(driver.directory("pids", TENANT) / "pids.max") == "max"


# -- usage, population, kill -----------------------------------------------------------------


def test_usage_population_and_kill(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    plan = driver.plan(JOB, Limits(memory_bytes=64 * MIB))
    env.run_plan(plan)
    assert not driver.populated(JOB)
    for directory in plan.mkdirs:
        os.rmdir(directory)

    proc = env.start(plan, *BUSY)
    assert driver.populated(JOB)
    assert driver.populated(TENANT)
    time.sleep(0.5)
    usage = driver.read_usage(JOB)
    assert usage.cpu_ns > 100_000_000
    assert usage.cpu_user_ns > 0
    assert usage.memory_current_bytes > 0
    assert usage.memory_peak_bytes >= usage.memory_current_bytes
    assert usage.pids_current == 1
    assert usage.oom_kills == 0
    # Tenants count their jobs (hierarchical counters).
    assert driver.read_usage(TENANT).cpu_ns >= usage.cpu_ns

    driver.kill(JOB)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not driver.populated(JOB)
    # The counters outlive the processes: the closing usage row reads them after exit.
    assert driver.read_usage(JOB).cpu_ns >= usage.cpu_ns
    driver.remove(JOB)
    assert not driver.exists(JOB)


def test_oom_kill_is_counted(env: Env) -> None:
    env.driver.ensure(TENANT, Limits())
    plan = env.driver.plan(JOB, Limits(memory_bytes=32 * MIB))
    proc = env.start(plan, sys.executable, "-c", "b = bytearray(200 * 1024 * 1024)")
    assert proc.wait(timeout=30) == -signal.SIGKILL
    usage = env.driver.read_usage(JOB)
    assert usage.oom_kills >= 1
    assert usage.memory_peak_bytes <= 32 * MIB


# -- freeze ----------------------------------------------------------------------------------


def test_freeze_stops_the_job_and_thaw_resumes_it(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    proc = env.start(driver.plan(JOB, Limits()), *BUSY)
    time.sleep(0.2)
    driver.freeze(JOB)
    state_file = driver.directory("freezer", JOB) / "freezer.state"
    assert parse_freezer_state(read(state_file)) == "FROZEN"
    # A task in the v1 refrigerator shows as D on this kernel (T on older ones).
    assert proc_state(proc.pid) in ("D", "T")
    assert cpu_ns_over(env, JOB, 0.3) < 5_000_000
    driver.freeze(JOB)  # freezing a frozen cgroup is a no-op

    driver.thaw(JOB)
    assert parse_freezer_state(read(state_file)) == "THAWED"
    assert cpu_ns_over(env, JOB, 0.3) > 50_000_000
    assert proc.poll() is None


def test_freezing_a_tenant_freezes_its_jobs(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    other = CgroupPath(("acme", "job-2"))
    env.start(driver.plan(JOB, Limits()), *BUSY)
    env.start(driver.plan(other, Limits()), *BUSY)
    driver.freeze(TENANT)
    assert cpu_ns_over(env, TENANT, 0.3) < 5_000_000
    with pytest.raises(CgroupError, match="an ancestor is frozen"):
        driver.thaw(JOB)
    driver.thaw(TENANT)
    assert cpu_ns_over(env, other, 0.3) > 20_000_000


# -- kill of frozen jobs ---------------------------------------------------------------------


@pytest.mark.parametrize("mirror", [True, False], ids=["cgroup.kill", "signal-loop"])
def test_kill_of_a_job_whose_tenant_is_frozen(env: Env, mirror: bool) -> None:
    # Thawing the job cannot help under a frozen tenant; the driver moves its tasks out.
    layout = env.layout if mirror else Layout(v1=env.layout.v1, unified=None, mode="v1")
    driver = open_driver(env.root, layout=layout)
    assert isinstance(driver, V1Driver)
    other = CgroupPath(("acme", "job-2"))
    driver.ensure(TENANT, Limits())
    victim = env.start(driver.plan(JOB, Limits()), *BUSY)
    env.start(driver.plan(other, Limits()), *BUSY)
    driver.freeze(TENANT)
    driver.kill(JOB)
    assert victim.wait(timeout=5) == -signal.SIGKILL
    assert not driver.populated(JOB)
    # The sibling stays frozen.
    assert driver.populated(other)
    assert cpu_ns_over(env, other, 0.3) < 5_000_000
    freezer = driver.directory("freezer", CgroupPath(()))
    assert read(freezer / "cgroup.procs") == ""
    driver.thaw(TENANT)
    assert cpu_ns_over(env, other, 0.3) > 20_000_000
    driver.remove_tree(CgroupPath(()))


FORKS = ("sh", "-c", "sleep 60 & sleep 60 & while :; do :; done")


def test_kill_of_a_frozen_job_with_children(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    proc = env.start(driver.plan(JOB, Limits()), *FORKS)
    assert driver.read_usage(JOB).pids_current >= 1
    time.sleep(0.2)
    assert driver.read_usage(JOB).pids_current == 3
    driver.freeze(JOB)
    driver.kill(JOB)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not driver.populated(JOB)
    for directory in driver.directories(JOB):
        assert read(directory / "cgroup.procs") == ""
    assert parse_freezer_state(read(driver.directory("freezer", JOB) / "freezer.state")) == (
        "THAWED"
    )
    driver.remove_tree(TENANT)
    assert not any(d.exists() for d in driver.directories(TENANT))


def test_kill_of_a_frozen_job_without_the_cgroup2_mirror(env: Env) -> None:
    # A pure v1 host: no cgroup.kill, no cgroup.events; freeze, signal, thaw, repeat.
    v1_only = Layout(v1=env.layout.v1, unified=None, mode="v1")
    driver = open_driver(env.root, layout=v1_only)
    assert isinstance(driver, V1Driver)
    assert not driver.has_unified
    driver.ensure(TENANT, Limits())
    plan = driver.plan(JOB, Limits())
    assert not any("unified" in d for d in plan.mkdirs)
    proc = env.start(plan, *FORKS)
    time.sleep(0.2)
    assert driver.populated(JOB)
    driver.freeze(JOB)
    driver.kill(JOB)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not driver.populated(JOB)
    driver.remove_tree(CgroupPath(()))
    assert not driver.exists(CgroupPath(()))


# -- removal ---------------------------------------------------------------------------------


def test_remove_leaves_nothing_in_any_hierarchy(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits(cpu_cores=1.0))
    env.start(driver.plan(JOB, Limits()), "sleep", "60")
    with pytest.raises(CgroupError, match="busy"):
        driver.remove(JOB)  # populated: EBUSY, retried briefly, then reported
    assert driver.children(TENANT) == ["job-1"]
    driver.remove_tree(CgroupPath(()))
    for top in env.tops():
        assert not top.exists()
    assert not driver.exists(TENANT)
    assert driver.children(TENANT) == []
