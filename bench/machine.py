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


# Where benchmarks keep their state directories and Postgres clusters. Not /tmp: on the
# machines these figures come from, creating a file or directory anywhere under /tmp costs
# about 0.7 ms of CPU against 0.02 ms elsewhere on the same ext4 filesystem (measured with
# 300 mkdir and 300 create calls each), which would dwarf the per-job work measured here.
# Production state lives in /var/lib/scheduler.
SCRATCH = "/var/tmp"
