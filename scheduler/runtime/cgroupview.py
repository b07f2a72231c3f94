"""The job's view of /sys/fs/cgroup: its own cgroup in each hierarchy, nothing else.

The monitor covers /sys/fs/cgroup with an empty tmpfs in the job's mount namespace and binds
the job's directory of each hierarchy where that hierarchy is mounted (on a v2 host, where
the one hierarchy is /sys/fs/cgroup itself, it binds the job's directory there). This module
says what to bind: pure rules over the plan's directories plus a cached look at the host's
mount points and symlinks (``cpu -> cpu,cpuacct``), so a launch costs no syscall here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

VIEW_ROOT = "/sys/fs/cgroup"

Binds = tuple[tuple[str, str], ...]


class CgroupView:
    """Turns a launch plan's cgroup directories into the monitor's --cgroup-view/-link."""

    def __init__(
        self,
        root: str = VIEW_ROOT,
        *,
        is_mount: Callable[[str], bool] = os.path.ismount,
        list_links: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self._root = root
        self._prefix = root + "/"
        self._is_mount = is_mount
        self._list_links = list_links or _host_links
        self._mounts: dict[str, bool] = {}
        self._links: dict[str, str] | None = None

    def _mounted(self, name: str) -> bool:
        known = self._mounts.get(name)
        if known is None:
            known = self._mounts[name] = self._is_mount(f"{self._prefix}{name}")
        return known

    def entries(self, dirs: tuple[str, ...]) -> tuple[Binds, Binds]:
        """(binds, links) for a job whose cgroup directories are ``dirs``; both empty when
        none of them is under the view root (then the monitor leaves the host's view)."""
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
        if self._links is None:
            self._links = self._list_links(self._root)
        bound = {name for name, _ in binds}
        links = tuple((n, t) for n, t in sorted(self._links.items()) if t in bound)
        return tuple(binds), links


def _host_links(root: str) -> dict[str, str]:
    """The symlinks right under ``root`` whose target is a sibling (``cpu -> cpu,cpuacct``)."""
    links: dict[str, str] = {}
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.is_symlink():
                    target = str(Path(entry.path).readlink())
                    if "/" not in target:
                        links[entry.name] = target
    except OSError:
        return {}
    return links
