"""The job's view of /sys/fs/cgroup: its own cgroup in each hierarchy, nothing else.

In the job's mount namespace the monitor binds the job's directory of each hierarchy over
that hierarchy's mount point under /sys/fs/cgroup (on a v2 host, where the one hierarchy is
/sys/fs/cgroup itself, over /sys/fs/cgroup) and detaches the hierarchies the job is not in
(cpuset, devices, named ones). This module says what to bind and what to detach: pure rules
over the plan's directories plus a cached look at the host's mount table, so a launch costs
no syscall here.
"""

from __future__ import annotations

import os
from collections.abc import Callable

VIEW_ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"

Binds = tuple[tuple[str, str], ...]


class CgroupView:
    """Turns a launch plan's cgroup directories into the monitor's --cgroup-view/-hide."""

    def __init__(
        self,
        root: str = VIEW_ROOT,
        *,
        is_mount: Callable[[str], bool] = os.path.ismount,
        cgroup_mounts: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        self._root = root
        self._prefix = root + "/"
        self._is_mount = is_mount
        self._list_mounts = cgroup_mounts or _host_cgroup_mounts
        self._mounts: dict[str, bool] = {}
        self._cgroup_mounts: frozenset[str] | None = None

    def _mounted(self, name: str) -> bool:
        known = self._mounts.get(name)
        if known is None:
            known = self._mounts[name] = self._is_mount(f"{self._prefix}{name}")
        return known

    def entries(self, dirs: tuple[str, ...]) -> tuple[Binds, tuple[str, ...]]:
        """(binds, hides) for a job whose cgroup directories are ``dirs``: (mount point name
        under the root, the job's directory) to bind, and the names of the other cgroup
        mounts there to detach; both empty when none of ``dirs`` is under the root (then the
        monitor leaves the host's view)."""
        binds: list[tuple[str, str]] = []
        for directory in dirs:
            if not directory.startswith(self._prefix):
                continue
            name = directory[len(self._prefix) :].split("/", 1)[0]
            if self._mounted(name):
                binds.append((name, directory))
            elif self._mounted(""):  # v2: the hierarchy is mounted at the root itself
                return ((".", directory),), ()
        if not binds:
            return (), ()
        if self._cgroup_mounts is None:
            self._cgroup_mounts = self._list_mounts(self._root)
        bound = {name for name, _ in binds}
        return tuple(binds), tuple(sorted(self._cgroup_mounts - bound))


def _host_cgroup_mounts(root: str, mountinfo: str = MOUNTINFO) -> frozenset[str]:
    """Names of the cgroup (v1 and v2) mount points right under ``root``."""
    names: set[str] = set()
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        kind = tail.split(" ", 1)[0]
        if len(parts) < 5 or kind not in ("cgroup", "cgroup2"):
            continue
        # Mount points escape spaces and the like as octal (\040); cgroup ones have none.
        parent, _, name = parts[4].rpartition("/")
        if parent == root and name:
            names.add(name)
    return frozenset(names)
