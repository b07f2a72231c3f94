"""What the kernel says about a test's cgroup, on a v1/hybrid host and on a pure v2 host
alike: the tests read limits and states through these instead of hard-coding one layout's
file names (v1: memory.limit_in_bytes in the memory hierarchy; v2: memory.max in the one
tree). Reading the kernel's files, not the driver's plan, is the point: they prove what the
driver wrote."""

from __future__ import annotations

from pathlib import Path

from scheduler.cgroups.detect import detect_layout


def pure_v2() -> bool:
    return detect_layout().mode == "v2"


def directory(controller: str, *parts: str) -> Path:
    """The cgroup ``parts`` (root first) in ``controller``'s hierarchy: the v1 mount of that
    controller, or on v2 (and for "unified") the cgroup2 mount."""
    layout = detect_layout()
    if layout.mode == "v2" or controller == "unified":
        assert layout.unified is not None, "no cgroup2 mount"
        return Path(layout.unified, *parts)
    return Path(layout.v1[controller], *parts)


def procs(*parts: str) -> Path:
    """cgroup.procs of the cgroup (v1: in the pids hierarchy)."""
    return directory("pids", *parts) / "cgroup.procs"


def memory_limit(*parts: str) -> int | None:
    """The memory limit in bytes, None for none."""
    if pure_v2():
        text = (directory("memory", *parts) / "memory.max").read_text().strip()
        return None if text == "max" else int(text)
    value = int((directory("memory", *parts) / "memory.limit_in_bytes").read_text())
    return None if value >= 1 << 62 else value


def memory_limit_file(*parts: str) -> Path:
    name = "memory.max" if pure_v2() else "memory.limit_in_bytes"
    return directory("memory", *parts) / name


def pids_max_file(*parts: str) -> Path:
    return directory("pids", *parts) / "pids.max"


def cpu_quota(*parts: str) -> tuple[int | None, int]:
    """(quota in us, None for none; period in us)."""
    if pure_v2():
        quota, period = (directory("cpu", *parts) / "cpu.max").read_text().split()
        return (None if quota == "max" else int(quota)), int(period)
    base = directory("cpu", *parts)
    quota_us = int((base / "cpu.cfs_quota_us").read_text())
    return (None if quota_us < 0 else quota_us), int((base / "cpu.cfs_period_us").read_text())


def kill_file(*parts: str) -> Path:
    """cgroup.kill of the cgroup (the cgroup2 tree, or the hybrid host's mirror of it)."""
    return directory("unified", *parts) / "cgroup.kill"


def freeze_file(*parts: str) -> Path:
    return directory("unified", *parts) / "cgroup.freeze"


def freezer_state(*parts: str) -> str:
    """ "FROZEN", "THAWED" (or v1's "FREEZING") as the kernel reports the cgroup."""
    if pure_v2():
        events = (directory("unified", *parts) / "cgroup.events").read_text().split()
        return "FROZEN" if events[events.index("frozen") + 1] == "1" else "THAWED"
    return (directory("freezer", *parts) / "freezer.state").read_text().strip()
