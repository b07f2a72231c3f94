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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from scheduler import launchplan
from scheduler.cgroups import fs
from scheduler.cgroups.parse import CounterParser, Pressure, Values
from scheduler.errors import CgroupError
from scheduler.names import NAME, NAME_SHAPE

DriverName = Literal["v1", "v2"]
# Defined in scheduler.launchplan (the C monitor's input, which runtime carries); kept
# importable from here, where the drivers and their callers import it.
LaunchPlan = launchplan.LaunchPlan

# The tenant name rule (scheduler/names.py): no dots or slashes, so a name can never leave
# the root.
_SEGMENT = NAME
_JOB_SEGMENT = re.compile(r"^job-[0-9]+(-[0-9]+)?$")


def check_segment(name: str) -> str:
    """Return ``name`` if it is a safe single cgroup directory name, else raise ValueError."""
    if not (_SEGMENT.match(name) or _JOB_SEGMENT.match(name)):
        raise ValueError(f"{name!r} is not a valid cgroup name: expected {NAME_SHAPE}")
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


def usage_of(values: Values) -> Usage:
    """The :class:`Usage` view of counter values (see parse.CounterParser): absent ones 0."""

    def get(field: str) -> int:
        return values.get(field) or 0

    return Usage(
        cpu_ns=get("cpu_ns"),
        cpu_user_ns=get("cpu_user_ns"),
        cpu_system_ns=get("cpu_system_ns"),
        memory_current_bytes=get("memory_current_bytes"),
        memory_peak_bytes=get("memory_peak_bytes"),
        io_read_bytes=get("io_read_bytes"),
        io_write_bytes=get("io_write_bytes"),
        oom_kills=get("oom_kills"),
        pids_current=get("pids"),
    )


# What a counter file is read for (the sampler reads every one, every sweep):
#  billed   the final read at exit takes it too, re-read until two reads agree (money);
#  gauge    the final read takes it once, after the billed ones settled;
#  monitor  only the monitor's final read takes it (settled; the agent's own one skips it);
#  sample   only the sampler reads it.
CounterRole = Literal["billed", "gauge", "monitor", "sample"]


@dataclass(frozen=True)
class CounterFile:
    """One counter file of a driver: ``name`` is its logical name (the key the monitor
    records its text under), ``where`` the hierarchy it lives in (v1: a controller or
    "unified"; v2: ""), ``file`` its name in the cgroup's directory."""

    name: str
    where: str
    file: str
    parser: CounterParser
    role: CounterRole


def kill_in_steps(driver: CgroupDriver, path: CgroupPath) -> None:
    """A driver's blocking kill(): its steps with the wait polled here (the async facade,
    cgroups/asyncdriver.py, runs the same steps with the wait on the event loop)."""
    sent = driver.start_kill(path)
    if sent is None:
        return
    emptied = sent and fs.wait_until(lambda: not driver.populated(path), driver.kill_timeout)
    driver.finish_kill(path, sent, emptied)


class CgroupDriver(Protocol):
    """Create, limit, observe, freeze, kill and remove cgroups under one root."""

    name: DriverName
    # The unit of the cpu counters read_usage() returns, in ns: v2's usage_usec truncates
    # each cgroup's count to a microsecond, v1's cpuacct.usage is exact.
    cpu_resolution_ns: int
    # How long kill() waits for a killed cgroup to empty before it tries harder or gives up.
    kill_timeout: float

    def ensure(self, path: CgroupPath, limits: Limits) -> None:
        """Create ``path`` (and its parents) in every hierarchy and write its limits."""
        ...

    def plan(self, path: CgroupPath, limits: Limits) -> LaunchPlan:
        """The plan that creates the leaf cgroup ``path`` and puts a process into it."""
        ...

    def read_usage(self, path: CgroupPath) -> Usage:
        """Read the counters of ``path`` (a job or a tenant, children included), through the
        same files and parsers as :meth:`counter_files`."""
        ...

    def counter_files(self, path: CgroupPath) -> list[tuple[CounterFile, Path]]:
        """Every counter file of ``path`` under the hierarchies this driver has (absent
        controllers left out), in the driver's order: what the sampler keeps open and
        the final read at exit takes (cgroups/counters.py)."""
        ...

    def counter_file(self, name: str) -> CounterFile:
        """The counter file named ``name`` (KeyError if this driver has none)."""
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
        """Kill every process in ``path`` (frozen ones too) and wait until it is empty:
        ``start_kill``, a wait of up to ``kill_timeout`` for ``populated`` to drop (when it
        signalled), then ``finish_kill`` (see kill_in_steps). ProcessesSurvive if some
        outlast it."""
        ...

    def start_kill(self, path: CgroupPath) -> bool | None:
        """The first step of :meth:`kill`: SIGKILL everything in ``path`` at once through
        cgroup.kill and return True (the caller then waits for ``populated`` to drop); False
        where there is no cgroup.kill (``finish_kill`` does it all); None: no such cgroup."""
        ...

    def finish_kill(self, path: CgroupPath, sent: bool, emptied: bool) -> None:
        """The last step of :meth:`kill`, after ``start_kill`` returned ``sent`` and the wait
        ended (``emptied``: the cgroup said it is empty): what is left to kill, or
        ProcessesSurvive."""
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
