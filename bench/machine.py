"""One line describing the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path


def describe() -> str:
    model = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} cpus ({model}), {mem_kib // 1024} MiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


# Where benchmarks keep their state directories and Postgres clusters (production state
# lives in /var/lib/scheduler). On the ext4 of the machines these figures come from, which
# has no journal, creating a file costs 0.2-0.8 ms of CPU in a block group where thousands
# of inodes were deleted recently (a test suite's or a previous benchmark's churn), against
# 0.01-0.04 ms in an undisturbed one: figures taken right after such churn are lower.
SCRATCH = "/var/tmp"


def runtime_tmpfs(where: Path) -> Path:
    """A tmpfs at ``where`` for an agent's ``runtime_dir`` (its monitors' pids and exit
    records), as systemd's ``RuntimeDirectory=`` gives the production unit /run/scheduler;
    an existing mount there (an agent started again) is kept. ``remove_scratch`` unmounts it."""
    where.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(where):
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256m,mode=0750", "tmpfs", str(where)],
            check=True,
        )
    return where


def remove_scratch(base: Path) -> None:
    """Remove a benchmark's scratch directory, unmounting what is mounted below it first."""
    below = str(base.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(below)), reverse=True):
        if subprocess.run(["umount", point], check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(base, ignore_errors=True)


def _busy_and_total() -> tuple[int, int]:
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def wait_quiet(threshold: float = 0.05, window: float = 0.2, limit: float = 10.0) -> float:
    """Wait until the machine's cpus are busy less than ``threshold`` of a ``window``
    (at most ``limit`` seconds); the seconds waited.

    The kernel finishes a job's teardown after the job (network namespaces in a workqueue,
    cgroups after an RCU grace period): without a pause the next phase of a benchmark pays
    for the previous phase's jobs."""
    start = time.monotonic()
    busy, total = _busy_and_total()
    while time.monotonic() - start < limit:
        time.sleep(window)
        busy2, total2 = _busy_and_total()
        if total2 > total and (busy2 - busy) / (total2 - total) < threshold:
            break
        busy, total = busy2, total2
    return time.monotonic() - start
