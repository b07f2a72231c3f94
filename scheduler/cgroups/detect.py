"""The one place that picks a cgroup driver for this host.

Pure v2 gets the v2 driver. v1 and hybrid hosts get the v1 driver, which also keeps the
hybrid host's controller-less cgroup2 mount in step for cgroup.kill, cgroup.events and PSI.
``prefer="v2"`` on a hybrid host drives the cgroup2 mount alone: freeze, kill and
population work, and any cpu/memory/pids limit is refused because no controller is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from scheduler.cgroups.base import CgroupDriver
from scheduler.cgroups.fs import check_root, read_file
from scheduler.cgroups.parse import Layout, parse_mountinfo
from scheduler.cgroups.v1 import V1_CONTROLLERS, V1Driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.errors import CgroupError

MOUNTINFO = "/proc/self/mountinfo"


def detect_layout(mountinfo_path: str = MOUNTINFO) -> Layout:
    """Where this process sees the cgroup hierarchies mounted."""
    return parse_mountinfo(read_file(mountinfo_path))


def _under(fs_root: Path, mount_point: str) -> Path:
    return fs_root / mount_point.lstrip("/")


def own_unified_cgroup(proc_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    """This process's cgroup2 path ("0::/path" in /proc/self/cgroup), None if it has none."""
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def open_driver(
    root: str,
    *,
    layout: Layout | None = None,
    prefer: Literal["v1", "v2"] | None = None,
    fs_root: Path = Path("/"),
    own_cgroup: str | None = None,
) -> CgroupDriver:
    """The driver for ``root`` (relative to every hierarchy mount, e.g. "scheduler" or
    "system.slice/scheduler.service/jobs"); ``fs_root`` relocates the mounts and
    ``own_cgroup`` stands for this process's cgroup2 path (tests)."""
    check_root(root)
    if layout is None:
        layout = detect_layout()
    if prefer == "v2" or (prefer is None and layout.mode == "v2"):
        if layout.unified is None:
            raise CgroupError(f"the v2 driver needs a cgroup2 mount; this host is {layout.mode}")
        mount = _under(fs_root, layout.unified)
        own = own_cgroup if own_cgroup is not None else own_unified_cgroup()
        own_dir = mount / own.lstrip("/") if own is not None else None
        return V2Driver(mount, root, own_cgroup=own_dir)
    mounts = {c: _under(fs_root, m) for c, m in layout.v1.items() if c in V1_CONTROLLERS}
    if not mounts:
        raise CgroupError(
            f"the v1 driver needs one of {', '.join(V1_CONTROLLERS)} mounted; "
            f"this host is {layout.mode}"
        )
    unified = _under(fs_root, layout.unified) if layout.unified is not None else None
    return V1Driver(mounts, root, unified=unified)
