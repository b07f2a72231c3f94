"""The v2 driver on this host's real cgroup2 mount (``prefer="v2"``).

On the hybrid development host that mount has no cpu/memory/pids controllers, so this
covers what cgroup2 gives without them: cgroup.procs, cgroup.events, cgroup.freeze,
cgroup.kill and the core cpu.stat. On a pure v2 host the same tests run on the real tree.
Each test works under ``cgtest-<uuid8>``; the finalizer thaws, kills and removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scheduler.cgroups.base import CgroupPath, LaunchPlan, Limits
from scheduler.cgroups.detect import detect_layout, open_driver
from scheduler.cgroups.parse import parse_flat_keyed
from scheduler.cgroups.v2 import V2Driver
from scheduler.errors import CgroupError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
]

BUSY = ("sh", "-c", "while :; do :; done")
TENANT = CgroupPath(("acme",))
JOB = CgroupPath(("acme", "job-1"))


def force_cleanup(top: Path) -> None:
    """Thaw, kill and rmdir everything under the test's own root, deepest first."""
    if not top.is_dir():
        return
    nodes = [Path(d) for d, _, _ in os.walk(top, topdown=False)]
    for node in nodes:
        (node / "cgroup.freeze").write_text("0")
    for node in nodes:
        if (node / "cgroup.kill").exists():
            (node / "cgroup.kill").write_text("1")
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
    top: Path
    driver: V2Driver
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, plan: LaunchPlan, *argv: str) -> subprocess.Popen[bytes]:
        """Create the plan's cgroup and run ``argv`` inside it from its first instruction."""
        for directory in plan.mkdirs:
            os.mkdir(directory, 0o755)
        for file, value in plan.writes:
            Path(file).write_text(value)
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

    def events(self, path: CgroupPath) -> dict[str, int]:
        return parse_flat_keyed((self.driver.directory(path) / "cgroup.events").read_text())


@pytest.fixture
def env() -> Iterator[Env]:
    layout = detect_layout()
    if layout.unified is None:
        pytest.skip("no cgroup2 mount on this host")
    root = f"cgtest-{uuid.uuid4().hex[:8]}"
    driver = open_driver(root, layout=layout, prefer="v2")
    assert isinstance(driver, V2Driver)
    top = Path(layout.unified) / root
    environment = Env(top, driver)
    try:
        yield environment
    finally:
        force_cleanup(top)
        for proc in environment.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        assert not top.exists(), f"cleanup left {top}"


def cpu_ns_over(env: Env, path: CgroupPath, seconds: float) -> int:
    before = env.driver.read_usage(path).cpu_ns
    time.sleep(seconds)
    return env.driver.read_usage(path).cpu_ns - before


def test_ensure_and_limits_on_the_available_controllers(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    assert driver.exists(TENANT)
    available = driver.controllers()
    if "cpu" in available:
        driver.ensure(TENANT, Limits(cpu_cores=1.0))
        assert (driver.directory(TENANT) / "cpu.max").read_text().split() == ["100000", "100000"]
    else:
        with pytest.raises(CgroupError, match=r"'cpu' is not available.*needed for cpu_cores"):
            driver.ensure(TENANT, Limits(cpu_cores=1.0))
    if "memory" not in available:
        with pytest.raises(CgroupError, match="'memory' is not available"):
            driver.plan(JOB, Limits(memory_bytes=1 << 26))


def test_population_freeze_thaw_kill_and_remove(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    plan = driver.plan(JOB, Limits())
    proc = env.start(plan, *BUSY)
    assert driver.populated(JOB)
    assert driver.populated(TENANT)
    assert driver.children(TENANT) == ["job-1"]
    time.sleep(0.3)
    usage = driver.read_usage(JOB)
    # cpu.stat's usage fields are core cgroup2, present without the cpu controller.
    assert usage.cpu_ns > 100_000_000
    assert usage.cpu_user_ns > 0

    driver.freeze(JOB)
    assert env.events(JOB)["frozen"] == 1
    assert (driver.directory(JOB) / "cgroup.freeze").read_text().strip() == "1"
    assert cpu_ns_over(env, JOB, 0.3) < 5_000_000
    driver.thaw(JOB)
    assert env.events(JOB)["frozen"] == 0
    assert cpu_ns_over(env, JOB, 0.3) > 50_000_000

    driver.kill(JOB)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not driver.populated(JOB)
    assert not driver.populated(TENANT)
    driver.remove(JOB)
    assert not driver.exists(JOB)
    driver.remove_tree(CgroupPath(()))
    assert not env.top.exists()


def test_kill_of_a_frozen_tenant(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    first = env.start(driver.plan(JOB, Limits()), "sh", "-c", "sleep 60 & sleep 60 & wait")
    second = env.start(driver.plan(CgroupPath(("acme", "job-2")), Limits()), *BUSY)
    time.sleep(0.2)
    driver.freeze(TENANT)
    assert env.events(JOB)["frozen"] == 1  # frozen through its parent
    with pytest.raises(CgroupError, match=r"its ancestor .*/acme is frozen"):
        driver.thaw(JOB)
    driver.kill(TENANT)
    assert first.wait(timeout=5) == -signal.SIGKILL
    assert second.wait(timeout=5) == -signal.SIGKILL
    assert not driver.populated(TENANT)
    driver.remove_tree(TENANT)
    assert not driver.exists(TENANT)


def test_remove_of_a_populated_cgroup_is_refused(env: Env) -> None:
    driver = env.driver
    driver.ensure(TENANT, Limits())
    env.start(driver.plan(JOB, Limits()), "sleep", "60")
    with pytest.raises(CgroupError, match="busy"):
        driver.remove(JOB)
    driver.remove_tree(CgroupPath(()))
    assert not env.top.exists()
