"""The cgroup v2 driver: one unified hierarchy, controllers enabled top-down.

v2 forbids processes in a cgroup whose children have controllers enabled ("no internal
processes"), so tenants are inner nodes that only ever hold job leaves, and the scheduler's
root must not hold the agent itself.

Delegation: a cgroup handed to the agent may enable controllers for its children. The
agent's own cgroup (from /proc/self/cgroup) counts as handed to it, and so does any cgroup
systemd delegated (``Delegate=yes``), which systemd marks with the ``trusted.delegate``
extended attribute (systemd 252 and newer; ``user.delegate`` too on later ones). Between such
a cgroup and the root, the driver enables what the cgroup offers; processes sitting there
(v2 allows none in a cgroup that enables controllers) are moved into a ``supervisor`` leaf,
as systemd's own ``DelegateSubgroup=`` (>= 254) would place them.

One case is refused instead: the agent's own process in a systemd unit's delegated cgroup.
Enabling controllers there works once, but systemd (< 254, or without
``DelegateSubgroup=``) starts the unit's next main process in that very cgroup, which v2 then
refuses (status 219/CGROUP): the unit could never restart while a job runs. The shipped units
(deploy/systemd) keep the jobs in ``scheduler-jobs.service`` instead, a unit that only holds
the delegated cgroup and never restarts with the agent. A parent outside any delegation is
never touched: its owner decides what it enables, and the driver names the remedy.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import structlog

from scheduler.cgroups import fs
from scheduler.cgroups.base import (
    CgroupPath,
    CounterFile,
    DriverName,
    LaunchPlan,
    Limits,
    Usage,
    check_io,
    check_segment,
    kill_in_steps,
    usage_of,
)
from scheduler.cgroups.parse import (
    IO_STAT,
    Pressure,
    Values,
    keyed,
    parse_controllers,
    parse_flat_keyed,
    parse_pressure,
    peak_or_current,
    pressure_totals,
    single,
)
from scheduler.errors import CgroupError, ProcessesSurvive

CPU_PERIOD_US = 100_000
# The kernel rejects quotas under 1 ms (min_cfs_quota_period in kernel/sched/core.c).
MIN_CPU_QUOTA_US = 1_000
# Enabled in every inner node when the parent offers them; cpuset, hugetlb... are left alone.
MANAGED_CONTROLLERS = ("cpu", "memory", "pids", "io")
# Without these the agent cannot run any job (every tenant has a cpu weight; memory and pids
# are the sandbox's own limits): it refuses to start rather than fail every job. io is
# optional: without it only jobs asking for io limits fail, which the start-up log says.
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")
# The leaf a delegated cgroup's processes move to when it must enable controllers.
SUPERVISOR_LEAF = "supervisor"
# The extended attributes systemd sets on a cgroup it delegated (Delegate=yes).
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
log = structlog.get_logger(__name__)


# The counter files, each in the cgroup's own directory.
COUNTERS = (
    CounterFile(
        "cpu.stat",
        "",
        "cpu.stat",
        keyed(
            (b"usage_usec ", "cpu_ns", 1000),
            (b"user_usec ", "cpu_user_ns", 1000),
            (b"system_usec ", "cpu_system_ns", 1000),
            (b"throttled_usec ", "cpu_throttled_ns", 1000),
        ),
        "billed",
    ),
    CounterFile("memory.current", "", "memory.current", single("memory_current_bytes"), "gauge"),
    # memory.peak appeared in 5.19; before it the current value stands for it.
    CounterFile("memory.peak", "", "memory.peak", single("memory_peak_bytes"), "billed"),
    CounterFile(
        "memory.events", "", "memory.events", keyed((b"oom_kill ", "oom_kills", 1)), "gauge"
    ),
    CounterFile("io.stat", "", "io.stat", IO_STAT, "billed"),
    CounterFile("pids.current", "", "pids.current", single("pids"), "sample"),
    CounterFile(
        "cpu.pressure", "", "cpu.pressure", pressure_totals("cpu_pressure_some_us", None), "sample"
    ),
    CounterFile(
        "memory.pressure",
        "",
        "memory.pressure",
        pressure_totals("memory_pressure_some_us", "memory_pressure_full_us"),
        "sample",
    ),
    CounterFile(
        "io.pressure",
        "",
        "io.pressure",
        pressure_totals("io_pressure_some_us", "io_pressure_full_us"),
        "sample",
    ),
)
_COUNTERS_BY_NAME = {c.name: c for c in COUNTERS}
# What read_usage reads: cpu.stat must be there (else the cgroup is gone); the others are
# missing where a controller is not enabled (counted 0).
_USAGE = ("cpu.stat", "memory.current", "memory.peak", "memory.events", "io.stat", "pids.current")


def has_delegate_xattr(cgroup: Path) -> bool:
    """True if systemd marked ``cgroup`` as delegated (reading trusted.* needs root; an
    unreadable or absent attribute counts as not delegated)."""
    for name in DELEGATE_XATTRS:
        try:
            if os.getxattr(cgroup, name).strip(b"\0") == b"1":
                return True
        except OSError:
            continue
    return False


def io_max_value(device: str, read_bps: int | None, write_bps: int | None) -> str:
    """One io.max line: ``MAJ:MIN rbps=N wbps=N`` ("max" where unlimited)."""
    return f"{device} rbps={read_bps or 'max'} wbps={write_bps or 'max'}"


def cpu_quota_us(cores: float) -> int:
    """cpu.max quota for ``cores`` CPUs over a 100 ms period."""
    return max(MIN_CPU_QUOTA_US, round(cores * CPU_PERIOD_US))


def _needed(limits: Limits) -> list[tuple[str, str]]:
    """(controller, Limits field) for each limit that is set."""
    needed = []
    if limits.cpu_cores is not None:
        needed.append(("cpu", "cpu_cores"))
    if limits.weight is not None:
        needed.append(("cpu", "weight"))
    if limits.memory_bytes is not None:
        needed.append(("memory", "memory_bytes"))
    if limits.pids_max is not None:
        needed.append(("pids", "pids_max"))
    if limits.io_devices and (limits.io_read_bps is not None or limits.io_write_bps is not None):
        needed.append(("io", "io_read_bps/io_write_bps"))
    return needed


def _check_values(limits: Limits) -> None:
    if limits.cpu_cores is not None and not limits.cpu_cores > 0:
        raise CgroupError(f"cpu_cores must be > 0, got {limits.cpu_cores}")
    if limits.weight is not None and not 1 <= limits.weight <= 10_000:
        raise CgroupError(f"weight must be in 1..10000, got {limits.weight}")
    if limits.memory_bytes is not None and limits.memory_bytes <= 0:
        raise CgroupError(f"memory_bytes must be > 0, got {limits.memory_bytes}")
    if limits.pids_max is not None and limits.pids_max < 0:
        raise CgroupError(f"pids_max must be >= 0, got {limits.pids_max}")
    check_io(limits)


class V2Driver:
    """cgroup v2 on one cgroup2 mount; ``root`` is relative to ``mount``."""

    name: DriverName = "v2"
    cpu_resolution_ns: int = 1000
    freeze_timeout: float = 2.0
    kill_timeout: float = 5.0

    def __init__(self, mount: Path, root: str, *, own_cgroup: Path | None = None) -> None:
        self._rel_root = fs.check_root(root)
        self.mount = mount
        self.root_dir = mount / self._rel_root
        self._available: frozenset[str] | None = None
        # The agent's own cgroup directory (from /proc/self/cgroup), None if unknown.
        self.own_cgroup = own_cgroup

    def __repr__(self) -> str:
        return f"V2Driver({str(self.root_dir)!r})"

    def directory(self, path: CgroupPath) -> Path:
        """The cgroup directory of ``path``."""
        return self.root_dir / path.rel

    # -- controllers and limits ------------------------------------------------------------

    def controllers(self) -> frozenset[str]:
        """Controllers the root offers: its cgroup.controllers, or, before the root exists,
        what its parent enables for children (its parent's cgroup.subtree_control)."""
        text = fs.read_optional(self.root_dir / "cgroup.controllers")
        if text is None:
            text = fs.read_file(self.root_dir.parent / "cgroup.subtree_control")
        self._available = parse_controllers(text)
        return self._available

    def _check(self, limits: Limits, path: CgroupPath, available: frozenset[str]) -> None:
        _check_values(limits)
        for controller, field in _needed(limits):
            if controller not in available:
                offered = " ".join(sorted(available)) or "none"
                raise CgroupError(
                    f"cgroup controller {controller!r} is not available for "
                    f"{self.directory(path)} (needed for {field}); the root offers: {offered}"
                )

    def _limit_writes(
        self, target: Path, limits: Limits, available: frozenset[str], *, reset: bool, swap: bool
    ) -> list[tuple[str, str]]:
        """Files to write for ``limits``; with ``reset`` an unset limit is written as its
        default, so ensure() on an existing cgroup also removes limits that were dropped."""
        writes: list[tuple[str, str]] = []
        if "cpu" in available:
            if limits.cpu_cores is not None:
                quota = cpu_quota_us(limits.cpu_cores)
                writes.append((f"{target}/cpu.max", f"{quota} {CPU_PERIOD_US}"))
            elif reset:
                writes.append((f"{target}/cpu.max", f"max {CPU_PERIOD_US}"))
            if limits.weight is not None or reset:
                writes.append((f"{target}/cpu.weight", str(limits.weight or 100)))
        if "memory" in available:
            memory = limits.memory_bytes
            if memory is not None or reset:
                writes.append((f"{target}/memory.max", str(memory or "max")))
                # Without this, swap would let a job use memory beyond memory.max.
                if swap:
                    writes.append((f"{target}/memory.swap.max", "max" if memory is None else "0"))
        if "pids" in available and (limits.pids_max is not None or reset):
            value = "max" if limits.pids_max is None else str(limits.pids_max)
            writes.append((f"{target}/pids.max", value))
        io_set = limits.io_read_bps is not None or limits.io_write_bps is not None
        if "io" in available and (io_set or reset):
            for device in limits.io_devices:
                value = io_max_value(device, limits.io_read_bps, limits.io_write_bps)
                writes.append((f"{target}/io.max", value))
        return writes

    def _write_io_weight(self, target: Path, weight: int | None) -> None:
        """The tenant's weight as its io weight: io.weight (iocost) or io.bfq.weight (BFQ,
        1..1000); with neither, the kernel has no proportional io control: skip, logged."""
        value = weight or 100
        for name, top in (("io.weight", 10_000), ("io.bfq.weight", 1000)):
            if (target / name).exists():
                fs.write_file(target / name, f"default {min(value, top)}")
                return
        if weight is not None:
            log.info("io_weight_unsupported", cgroup=str(target), weight=weight)

    def ensure(self, path: CgroupPath, limits: Limits) -> None:
        """Create ``path`` as an inner node (a tenant) and write its limits.

        The root, every ancestor and ``path`` itself get ``+cpu +memory +pids +io`` (those
        the root offers) in cgroup.subtree_control, so jobs created below by plan() can be
        limited and accounted. Enabling is a no-op when already enabled.
        """
        if not path.parts:
            self._take_delegation()
        fs.make_dirs(self.mount, self._rel_root)
        available = self.controllers()
        self._check(limits, path, available)
        enable = " ".join(f"+{c}" for c in MANAGED_CONTROLLERS if c in available)
        inner = [
            self.root_dir / CgroupPath(path.parts[:depth]).rel
            for depth in range(len(path.parts) + 1)
        ]
        for node in inner:
            fs.make_dir(node)
            if not enable:
                continue
            try:
                fs.write_file(node / "cgroup.subtree_control", enable)
            except CgroupError as exc:
                if fs.cause_errno(exc) == errno.EBUSY:
                    raise CgroupError(
                        f"cannot enable {enable} in {node}: it holds processes, and cgroup v2 "
                        "allows processes only in leaf cgroups (move them into a child first)"
                    ) from exc
                raise
        target = self.directory(path)
        swap = (target / "memory.swap.max").exists()
        for file, value in self._limit_writes(target, limits, available, reset=True, swap=swap):
            fs.write_file(file, value)
        if "io" in available:
            self._write_io_weight(target, limits.weight)

    def _delegated(self, directory: Path) -> bool:
        """True if ``directory`` is handed to the agent: its own cgroup or below it, or a
        cgroup systemd delegated (the xattr) or below one."""
        own = self.own_cgroup
        if own is not None and (directory == own or own in directory.parents):
            return True
        return self._systemd_delegated_top(directory) is not None

    def _systemd_delegated_top(self, directory: Path) -> Path | None:
        """The highest cgroup at or above ``directory`` (below the mount) that systemd marked
        as delegated, None if there is none."""
        top = None
        for level in (directory, *directory.parents):
            if level == self.mount or self.mount not in level.parents:
                break
            if has_delegate_xattr(level):
                top = level
        return top

    def _take_delegation(self) -> None:
        """Make every delegated cgroup above the root (see the module's docstring) enable what
        it offers of our controllers; cgroups outside a delegation are left to their owners."""
        parent = self.root_dir.parent
        if parent == self.mount or not self._delegated(parent):
            return
        top = self._systemd_delegated_top(parent)
        own = self.own_cgroup
        # Our own cgroup is the delegation unless systemd's sits above it (then the levels
        # above ours are the unit's, holding no processes of ours).
        ours = own is not None and (parent == own or own in parent.parents)
        if ours and (top is None or top == own or (own is not None and own in top.parents)):
            top = own
        # An agent in the host's top cgroup was delegated nothing: the top is not ours.
        if top is None or top == self.mount:
            return
        level = top
        self._enable_for_children(level)
        for part in parent.relative_to(top).parts:
            level = level / part
            fs.make_dir(level)
            self._enable_for_children(level)

    def _enable_for_children(self, cgroup: Path) -> None:
        offered = parse_controllers(fs.read_file(cgroup / "cgroup.controllers"))
        enabled = parse_controllers(fs.read_file(cgroup / "cgroup.subtree_control"))
        missing = [c for c in MANAGED_CONTROLLERS if c in offered and c not in enabled]
        if not missing:
            return
        enable = " ".join(f"+{c}" for c in missing)
        try:
            fs.write_file(cgroup / "cgroup.subtree_control", enable)
        except CgroupError as exc:
            if fs.cause_errno(exc) != errno.EBUSY:
                raise
        else:
            return
        if (
            has_delegate_xattr(cgroup)
            and str(os.getpid()) in fs.read_file(cgroup / "cgroup.procs").split()
        ):
            raise CgroupError(
                f"the cgroup root {self.root_dir} is inside {cgroup}, the cgroup systemd "
                "starts this unit's main process in: with controllers enabled there the unit "
                "could not restart while a job runs (status 219/CGROUP). Point "
                "SCHEDULER_CGROUP_ROOT at system.slice/scheduler-jobs.service/jobs (the "
                "holder unit in deploy/systemd), or on systemd >= 254 add "
                f"DelegateSubgroup={SUPERVISOR_LEAF} to the unit"
            )
        leaf = cgroup / SUPERVISOR_LEAF
        if leaf == self.root_dir or leaf in self.root_dir.parents:
            raise CgroupError(
                f"the cgroup root {self.root_dir} goes through {leaf}, the leaf the agent's "
                "own processes need: choose another SCHEDULER_CGROUP_ROOT"
            )
        fs.make_dir(leaf)
        moved = self._move_processes(cgroup, leaf)
        fs.write_file(cgroup / "cgroup.subtree_control", enable)
        log.info(
            "cgroup_delegation_taken",
            cgroup=str(cgroup),
            enabled=enable,
            moved_to=str(leaf),
            processes=moved,
        )

    def missing_controllers(self) -> tuple[str, ...]:
        """Managed controllers the root does not offer (after ensure() of the root)."""
        offered = self.controllers()
        return tuple(c for c in MANAGED_CONTROLLERS if c not in offered)

    def remedy(self, missing: tuple[str, ...]) -> str:
        """What an operator does to get ``missing`` controllers to the root."""
        parent = self.root_dir.parent
        enabled = fs.read_optional(parent / "cgroup.subtree_control") or ""
        plus = " ".join(f"+{c}" for c in missing)
        text = (
            f"cgroup controller(s) {', '.join(missing)} not available in {self.root_dir}: "
            f"its parent {parent} enables only '{enabled.strip() or 'nothing'}' for its "
            f"children and is not delegated to the agent. Enable them there "
            f"(echo '{plus}' > {parent}/cgroup.subtree_control"
        )
        if parent == self.mount:
            text += (
                "; on a systemd host durably: systemctl set-property system.slice "
                "CPUWeight=100 IOWeight=100"
            )
        return text + "), or run the agent under deploy/systemd (docs/operations.md)"

    @staticmethod
    def _move_processes(source: Path, target: Path) -> int:
        """Move every process of ``source`` into ``target``; a process that exits meanwhile
        is fine (ESRCH). Repeats until ``source`` is empty (a child forked meanwhile)."""
        moved = 0
        for _ in range(100):
            pids = fs.read_file(source / "cgroup.procs").split()
            if not pids:
                return moved
            for pid in pids:
                try:
                    fs.write_file(target / "cgroup.procs", pid)
                    moved += 1
                except CgroupError as exc:
                    if fs.cause_errno(exc) != errno.ESRCH:
                        raise
        raise CgroupError(f"processes keep appearing in {source}; cannot empty it")

    def plan(self, path: CgroupPath, limits: Limits) -> LaunchPlan:
        """The leaf ``path`` (its parent must exist via ensure()) with ``limits``."""
        if not path.parts:
            raise CgroupError("plan() needs a job path below the root, got the root itself")
        available = self._available if self._available is not None else self.controllers()
        self._check(limits, path, available)
        leaf = self.directory(path)
        # memory.swap.max exists only with swap accounting; the parent tells for the leaf.
        swap = limits.memory_bytes is not None and (leaf.parent / "memory.swap.max").exists()
        writes = self._limit_writes(leaf, limits, available, reset=False, swap=swap)
        return LaunchPlan(
            mkdirs=(str(leaf),),
            writes=tuple(writes),
            procs=(f"{leaf}/cgroup.procs",),
            dirs=(str(leaf),),
        )

    # -- observing -------------------------------------------------------------------------

    def counter_files(self, path: CgroupPath) -> list[tuple[CounterFile, Path]]:
        d = self.directory(path)
        return [(counter, d / counter.file) for counter in COUNTERS]

    def counter_file(self, name: str) -> CounterFile:
        return _COUNTERS_BY_NAME[name]

    def read_usage(self, path: CgroupPath) -> Usage:
        """Counters of ``path`` and its descendants; files of absent controllers count 0."""
        d = self.directory(path)
        values: Values = {}
        for name in _USAGE:
            counter = _COUNTERS_BY_NAME[name]
            text = fs.read_file(d / name) if name == "cpu.stat" else fs.read_optional(d / name)
            if text:
                counter.parser.parse(text.encode(), values)
        return usage_of(peak_or_current(values))

    def read_pressure(self, path: CgroupPath, resource: str) -> Pressure:
        """PSI of ``path`` for ``resource`` ("cpu", "memory" or "io")."""
        return parse_pressure(fs.read_file(self.directory(path) / f"{resource}.pressure"))

    def _events(self, path: CgroupPath) -> dict[str, int]:
        return parse_flat_keyed(fs.read_file(self.directory(path) / "cgroup.events"))

    def populated(self, path: CgroupPath) -> bool:
        """cgroup.events ``populated``: 1 while any process is in ``path`` or below."""
        return self._events(path).get("populated", 0) == 1

    def emptiness_file(self, path: CgroupPath) -> str:
        return f"{self.root_dir}/{path.rel_text}/cgroup.events"

    def exists(self, path: CgroupPath) -> bool:
        return self.directory(path).is_dir()

    def children(self, path: CgroupPath) -> list[str]:
        return [n for n in fs.child_dirs(self.directory(path)) if not n.startswith(".")]

    def helper_dir(self, name: str) -> Path:
        return self.root_dir / f".{check_segment(name)}"

    # -- freezing and killing --------------------------------------------------------------

    def freeze(self, path: CgroupPath) -> None:
        """Write cgroup.freeze=1 and wait (bounded) until cgroup.events says ``frozen 1``.

        The write only records the request: each task freezes when it next passes the
        signal-delivery path, and the kernel sets ``frozen 1`` once all of them have. A task
        in uninterruptible sleep (a vfork parent, NFS) delays that, so the wait is bounded
        and a cgroup that does not get there is thawed again rather than left half frozen.
        """
        fs.write_file(self.directory(path) / "cgroup.freeze", "1")
        if fs.wait_until(lambda: self._events(path).get("frozen") == 1, self.freeze_timeout):
            return
        fs.write_file(self.directory(path) / "cgroup.freeze", "0")
        raise CgroupError(
            f"{self.directory(path)} did not report frozen within {self.freeze_timeout} s; "
            "thawed it again"
        )

    def thaw(self, path: CgroupPath) -> None:
        """Write cgroup.freeze=0 and wait until ``frozen 0`` (it stays 1 under a frozen
        ancestor, which is reported as an error)."""
        d = self.directory(path)
        fs.write_file(d / "cgroup.freeze", "0")
        # Thawing clears "frozen" at once unless an ancestor still asks for freezing.
        if self._events(path).get("frozen") == 0:
            return
        ancestor = self._frozen_ancestor(d)
        if ancestor is not None:
            raise CgroupError(f"{d} is still frozen: its ancestor {ancestor} is frozen")
        if not fs.wait_until(lambda: self._events(path).get("frozen") == 0, self.freeze_timeout):
            raise CgroupError(f"{d} did not report thawed within {self.freeze_timeout} s")

    def _frozen_ancestor(self, d: Path) -> Path | None:
        """The nearest ancestor below the mount whose cgroup.freeze is 1, if any."""
        for ancestor in d.parents:
            if ancestor == self.mount or self.mount not in ancestor.parents:
                return None
            if (fs.read_optional(ancestor / "cgroup.freeze") or "0").strip() == "1":
                return ancestor
        return None

    def release_cpu(self, path: CgroupPath) -> None:
        """Lift cpu.max of ``path`` and below (see V1Driver.release_cpu: dying tasks in a
        throttled cgroup can stall on Linux 6.18)."""
        for directory in fs.walk_deepest_first(self.directory(path)):
            if (directory / "cpu.max").exists():
                with contextlib.suppress(CgroupError):
                    fs.write_file(directory / "cpu.max", f"max {CPU_PERIOD_US}")

    def kill(self, path: CgroupPath) -> None:
        """SIGKILL everything in ``path`` and below, then wait (bounded) until it is empty.

        cgroup.kill (5.14+) kills the whole subtree and keeps new forks out while doing so;
        frozen tasks die too. Older kernels get the freeze/signal/thaw loop instead.
        """
        kill_in_steps(self, path)

    def start_kill(self, path: CgroupPath) -> bool | None:
        d = self.directory(path)
        if not d.is_dir():
            return None
        self.release_cpu(path)
        if not (d / "cgroup.kill").exists():
            return False
        fs.write_file(d / "cgroup.kill", "1")
        # Signals are delivered at once, but each task leaves the cgroup only when it
        # passes cgroup_exit(), so "populated" drops a little later.
        return True

    def finish_kill(self, path: CgroupPath, sent: bool, emptied: bool) -> None:
        d = self.directory(path)
        if emptied:
            return
        if sent:
            raise ProcessesSurvive(
                f"{d} still has processes {self.kill_timeout} s after cgroup.kill", fs.pids_below(d)
            )
        froze = False

        def freeze() -> bool:
            nonlocal froze
            try:
                self.freeze(path)
            except CgroupError:
                return False
            froze = True
            return True

        # Frozen tasks in v2 still die on SIGKILL, so the thaw can wait until the end.
        fs.kill_until_empty(
            d, lambda: fs.pids_below(d), freeze=freeze, thaw=lambda: None, timeout=self.kill_timeout
        )
        if froze:
            self.thaw(path)

    # -- removing --------------------------------------------------------------------------

    def remove(self, path: CgroupPath) -> None:
        fs.remove_dir(self.directory(path))

    def remove_tree(self, path: CgroupPath) -> None:
        if not self.exists(path):
            return
        self.kill(path)
        for node in fs.walk_deepest_first(self.directory(path)):
            fs.remove_dir(node)
