"""The cgroup lock warmer (runtime/warmer.c + warmer.py) on the real kernel.

What it does is observable without timing anything: it moves itself into its own hidden
cgroup, writes to that ``cgroup.procs`` (counted in /proc/PID/io ``syscw``) only within the
window after a poke, and goes away with its agent, leaving no cgroup behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from scheduler.cgroups.base import CgroupPath, Limits
from scheduler.cgroups.detect import open_driver
from scheduler.errors import LaunchError
from scheduler.runtime.launcher import warmer_binary
from scheduler.runtime.warmer import HELPER_NAME, LockWarmer
from tests.conftest import agent_settings, start_agent

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups)"),
]


def write_syscalls(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "syscw":
            return int(value)
    raise AssertionError(f"no syscw in /proc/{pid}/io")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_warm_only_after_a_poke(cgroup_root: str, tmp_path: Path) -> None:
    driver = open_driver(cgroup_root)
    driver.ensure(CgroupPath(()), Limits())
    directory = driver.helper_dir(HELPER_NAME)
    warmer = await LockWarmer.start(warmer_binary(tmp_path), directory, window=0.3)
    try:
        assert (directory / "cgroup.procs").read_text().split() == [str(warmer.pid)]
        # Hidden from the tree walks that look for tenants and jobs.
        assert driver.children(CgroupPath(())) == []
        idle = write_syscalls(warmer.pid)
        await anyio.sleep(0.4)
        assert write_syscalls(warmer.pid) == idle, "an idle warmer must not write"
        warmer.poke()
        await anyio.sleep(0.2)
        warm = write_syscalls(warmer.pid)
        assert warm - idle >= 10, f"{warm - idle} moves in 0.2 s of a 3 ms interval"
        await anyio.sleep(0.4)  # past the window
        settled = write_syscalls(warmer.pid)
        await anyio.sleep(0.3)
        assert write_syscalls(warmer.pid) == settled, "still writing after the window"
        # Pokes far more often than the interval still mean one move per interval.
        before = write_syscalls(warmer.pid)
        started = time.monotonic()
        while time.monotonic() - started < 0.15:
            warmer.poke()
            await anyio.sleep(0.0005)
        moves = write_syscalls(warmer.pid) - before
        assert moves <= 0.15 / 0.003 + 5, f"{moves} moves in 0.15 s"
    finally:
        await warmer.aclose()
    assert not alive(warmer.pid)
    assert not directory.exists()


async def test_a_warmer_that_cannot_start_says_why(tmp_path: Path) -> None:
    not_a_cgroup = tmp_path / "plain"
    with pytest.raises(LaunchError, match=r"warmer did not start: .*cgroup\.procs"):
        await LockWarmer.start(warmer_binary(tmp_path / "bin"), not_a_cgroup, window=1)
    assert not not_a_cgroup.exists()
    with pytest.raises(LaunchError, match="warm window"):
        await LockWarmer.start(warmer_binary(tmp_path / "bin"), not_a_cgroup, window=0)


def test_the_warmer_dies_with_its_agent(cgroup_root: str, tmp_path: Path) -> None:
    """An agent killed with SIGKILL closes nothing; the warmer must go anyway."""
    driver = open_driver(cgroup_root)
    driver.ensure(CgroupPath(()), Limits())
    directory = driver.helper_dir(HELPER_NAME)
    script = f"""
import anyio, sys
from pathlib import Path
from scheduler.runtime.launcher import warmer_binary
from scheduler.runtime.warmer import LockWarmer

async def main():
    w = await LockWarmer.start(warmer_binary(Path({str(tmp_path)!r})), Path({str(directory)!r}),
                               window=5)
    print(w.pid, flush=True)
    await anyio.sleep(60)

anyio.run(main)
"""
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        # The agent's log goes to stdout too: the pid is the first line that is a number.
        pid = next(int(line) for line in agent.stdout if line.strip().isdigit())
        assert alive(pid)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        assert agent.stdout is not None
        agent.stdout.close()
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)
    # Its cgroup is empty now; the next agent reuses or the teardown removes it.
    assert (directory / "cgroup.procs").read_text() == ""


async def test_agent_runs_and_removes_its_warmer(
    dsn: str, state_dir: Path, cgroup_root: str
) -> None:
    directory = open_driver(cgroup_root).helper_dir(HELPER_NAME)
    async with anyio.create_task_group() as tg:
        handle = await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root))
        pids = (directory / "cgroup.procs").read_text().split()
        assert len(pids) == 1
        async with httpx.AsyncClient(base_url=f"http://{handle.ready.http}") as client:
            assert (await client.get("/readyz")).status_code == 200
        handle.stop()
    assert not directory.exists()
    assert not alive(int(pids[0]))


async def test_agent_without_warmer(dsn: str, state_dir: Path, cgroup_root: str) -> None:
    directory = open_driver(cgroup_root).helper_dir(HELPER_NAME)
    async with anyio.create_task_group() as tg:
        handle = await start_agent(
            tg, agent_settings(dsn, state_dir, cgroup_root, launch_warm_seconds=0)
        )
        assert not directory.exists()
        handle.stop()
