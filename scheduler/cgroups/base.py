"""The one interface both cgroup drivers (v1 and v2) implement, and its values.

The agent never touches cgroupfs paths itself: it asks a driver for a launch plan (the
directories to create, the limit files to write, the ``cgroup.procs`` files the job's first
process is written to before it runs), and later for usage, population, kill and removal.
The plan is executed by the C monitor, so that a job is inside every hierarchy before its
first instruction and the agent's event loop does not pay for the syscalls.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from scheduler.cgroups.parse import Pressure
from scheduler.errors import CgroupError

DriverName = Literal["v1", "v2"]

# Same rule as scheduler.tenants.name: no dots or slashes, so a name can never leave the root.
_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_JOB_SEGMENT = re.compile(r"^job-[0-9]+(-[0-9]+)?$")


def check_segment(name: str) -> str:
    """Return ``name`` if it is a safe single cgroup directory name, else raise ValueError."""
    if not (_SEGMENT.match(name) or _JOB_SEGMENT.match(name)):
        raise ValueError(
            f"{name!r} is not a valid cgroup name: expected [a-z0-9][a-z0-9_-]{{0,62}}"
        )
    return name


@dataclass(frozen=True)
class CgroupPath:
    """A cgroup relative to the scheduler's root, as a tuple of checked segments.

    ``CgroupPath(("acme", "job-42"))`` is ``<root>/acme/job-42`` in every hierarchy.
    """

    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        for part in self.parts:
            check_segment(part)

    @classmethod
    def for_job(cls, tenant_chain: tuple[str, ...], job_id: int) -> CgroupPath:
        """The cgroup of a job under its tenant chain (root tenant first)."""
        return cls((*tenant_chain, f"job-{job_id}"))

    @functools.cached_property
    def rel(self) -> PurePosixPath:
        return PurePosixPath(*self.parts) if self.parts else PurePosixPath(".")

    @functools.cached_property
    def rel_text(self) -> str:
        """``rel`` as a string ("." for the root), cheaper to join than a path."""
        return "/".join(self.parts) if self.parts else "."

    def parent(self) -> CgroupPath:
        return CgroupPath(self.parts[:-1])


@dataclass(frozen=True)
class Limits:
    """Kernel-enforced limits for one cgroup; None means unlimited."""

    cpu_cores: float | None = None
    memory_bytes: int | None = None
    pids_max: int | None = None
    # Relative share under contention, in cgroup v2's cpu.weight scale (1..10000, default 100).
    weight: int | None = None
    # Disk bandwidth (bytes per second) on each block device of ``io_devices`` ("MAJ:MIN").
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_devices: tuple[str, ...] = ()


def check_io(limits: Limits) -> None:
    """Refuse io limits that are not positive or name a malformed device."""
    for name, value in (("io_read_bps", limits.io_read_bps), ("io_write_bps", limits.io_write_bps)):
        if value is not None and value <= 0:
            raise CgroupError(f"{name} must be > 0, got {value}")
    for device in limits.io_devices:
        major, sep, minor = device.partition(":")
        if not (sep and major.isdigit() and minor.isdigit()):
            raise CgroupError(f"io device {device!r} is not MAJ:MIN")


@dataclass(frozen=True)
class Usage:
    """Counters of one cgroup, read from the kernel, in base units.

    CPU is kept in nanoseconds (integers) so that sums are exact; v2 reports microseconds,
    which the v2 driver multiplies by 1000.
    """

    cpu_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    memory_current_bytes: int = 0
    memory_peak_bytes: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    oom_kills: int = 0
    pids_current: int = 0


@dataclass(frozen=True)
class LaunchPlan:
    """What the monitor does, in order, before it lets the job's first process run.

    ``mkdirs`` are created with mode 0755 (EEXIST is fine), ``writes`` are (file, value)
    pairs written in order (a failure is a start error naming the file), and the job's
    process id is written to every file of ``procs``.
    """

    mkdirs: tuple[str, ...] = ()
    writes: tuple[tuple[str, str], ...] = ()
    procs: tuple[str, ...] = ()
    # Directories to remove (deepest first) when the job's cgroup goes away.
    dirs: tuple[str, ...] = field(default=())


class CgroupDriver(Protocol):
    """Create, limit, observe, freeze, kill and remove cgroups under one root."""

    name: DriverName
    # The unit of the cpu counters read_usage() returns, in ns: v2's usage_usec truncates
    # each cgroup's count to a microsecond, v1's cpuacct.usage is exact.
    cpu_resolution_ns: int

    def ensure(self, path: CgroupPath, limits: Limits) -> None:
        """Create ``path`` (and its parents) in every hierarchy and write its limits."""
        ...

    def plan(self, path: CgroupPath, limits: Limits) -> LaunchPlan:
        """The plan that creates the leaf cgroup ``path`` and puts a process into it."""
        ...

    def read_usage(self, path: CgroupPath) -> Usage:
        """Read the counters of ``path`` (a job or a tenant, children included)."""
        ...

    def populated(self, path: CgroupPath) -> bool:
        """True while any process is in ``path`` or its descendants."""
        ...

    def emptiness_file(self, path: CgroupPath) -> str:
        """The file that tells whether ``path`` holds processes: its cgroup.events (the
        ``populated`` line, descendants included) or, without one, its cgroup.procs."""
        ...

    def read_pressure(self, path: CgroupPath, resource: str) -> Pressure:
        """PSI of ``path`` for ``resource`` ("cpu", "memory", "io"); CgroupError where the
        kernel has no pressure file for it."""
        ...

    def kill(self, path: CgroupPath) -> None:
        """Kill every process in ``path`` (frozen ones too)."""
        ...

    def release_cpu(self, path: CgroupPath) -> None:
        """Lift the cpu quota of ``path`` and below (for a dying job: see the drivers)."""
        ...

    def freeze(self, path: CgroupPath) -> None:
        """Freeze every process in ``path``; returns once the kernel confirms it."""
        ...

    def thaw(self, path: CgroupPath) -> None:
        """Undo :meth:`freeze`."""
        ...

    def remove(self, path: CgroupPath) -> None:
        """Remove the (empty) cgroup ``path`` from every hierarchy; missing is fine."""
        ...

    def exists(self, path: CgroupPath) -> bool:
        """True if ``path`` exists in the driver's main hierarchy."""
        ...

    def children(self, path: CgroupPath) -> list[str]:
        """Names of the child cgroups of ``path`` (empty if it does not exist).

        Hidden names (a leading dot, see :meth:`helper_dir`) are the agent's own helpers,
        never tenants or jobs, and are left out.
        """
        ...

    def helper_dir(self, name: str) -> Path:
        """``<root>/.<name>`` in one hierarchy: a leaf cgroup for one of the agent's own
        helper processes. A dot can never start a tenant or job name, so it cannot clash."""
        ...

    def remove_tree(self, path: CgroupPath) -> None:
        """Kill everything under ``path`` and remove it, deepest first (teardown/tests)."""
        ...
