"""One line describing the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform


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
