"""``scheduler serve`` as a real process, for tests that kill, stop or restart the agent, and
the short lease settings of the tests where agents expire each other's nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio

from scheduler.cgroups.detect import detect_layout
from tests.conftest import slow

# 4 s: a loaded 2-core host may stall an event loop for a second; expiry still comes fast.
SHORT_LEASE: dict[str, float] = {
    "lease_seconds": 4.0,
    "heartbeat_seconds": 0.5,
    "lease_grace_seconds": 0.5,
}


def start_serve(
    dsn: str,
    state_dir: Path,
    cgroup_root: str,
    log: Path,
    *,
    node: str = "restart-node",
    env: dict[str, str] | None = None,
    **settings: object,
) -> subprocess.Popen[bytes]:
    """Start ``scheduler serve`` on ``dsn``; ``settings`` become ``SCHEDULER_*`` variables,
    ``env`` is added as is (``SCHEDULER_FAILPOINTS``). Output is appended to ``log``."""
    full_env = {
        **os.environ,
        "SCHEDULER_DATABASE_URL": dsn,
        "SCHEDULER_STATE_DIR": str(state_dir),
        "SCHEDULER_CGROUP_ROOT": cgroup_root,
        "SCHEDULER_NODE_NAME": node,
        "SCHEDULER_POLL_INTERVAL": "0.5",
        "SCHEDULER_LOG_FORMAT": "json",
        "SCHEDULER_HTTP_ADDR": "127.0.0.1:0",
        # As agent_settings(): short jobs get one usage row even under emulation.
        "SCHEDULER_SAMPLE_INTERVAL": str(slow(10.0)),
        **{f"SCHEDULER_{name.upper()}": str(value) for name, value in settings.items()},
        **(env or {}),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )


async def wait_ready(
    proc: subprocess.Popen[bytes], log: Path, count: int, node: str = "restart-node"
) -> None:
    """Until the log shows the ``count``-th 'ready' line of ``node`` (one per start)."""
    with anyio.fail_after(slow(60)):
        while log.read_text().count(f"scheduler: node {node} ready") < count:
            assert proc.poll() is None, log.read_text()
            await anyio.sleep(0.05)


def process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def wait_stopped(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until the agent stopped itself at a failpoint (SIGSTOP)."""
    with anyio.fail_after(slow(timeout)):
        while process_state(proc.pid) != "T":
            assert proc.poll() is None, log.read_text()
            await anyio.sleep(0.01)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the agent as abruptly as the kernel can; its jobs' monitors live on."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the agent as SIGTERM does if it still runs (its jobs keep running)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sigkill(proc)


def leftover_job_cgroups(cgroup_root: str, tenant: str = "default") -> list[str]:
    """Job cgroups still under ``cgroup_root``'s tenant, in every hierarchy this host mounts:
    each v1 controller's and the cgroup2 one (on a pure v2 host, /sys/fs/cgroup itself)."""
    layout = detect_layout()
    mounts = {*layout.v1.values(), *([layout.unified] if layout.unified else [])}
    assert mounts, "no cgroup hierarchy mounted: nothing could be checked"
    found = []
    for mount in sorted(mounts):
        directory = Path(mount) / cgroup_root / tenant
        if directory.is_dir():
            found += [
                str(p) for p in directory.iterdir() if p.is_dir() and p.name.startswith("job-")
            ]
    return found


async def wait_gone(path: Path, timeout: float = 10) -> None:
    """Until ``path`` is gone, at most ``timeout`` s: the recorder removes an attempt's
    monitor directory just after its end is committed, so a test that saw the row may look
    a moment too early."""
    with anyio.move_on_after(slow(timeout)):
        while path.exists():
            await anyio.sleep(0.02)
