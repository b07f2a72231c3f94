"""The cgroup v1 driver: one directory per hierarchy, plus the cgroup2 mirror on hybrid hosts.

Controllers used: cpu, cpuacct, memory, pids, blkio and freezer, whichever are mounted
(cpu and cpuacct may share one mount). On a hybrid host the controller-less cgroup2 mount
is kept in step and used for what v1 lacks: cgroup.kill, cgroup.events and PSI files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Mapping
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
    Pressure,
    Values,
    blkio_sums,
    keyed,
    parse_flat_keyed,
    parse_freezer_state,
    parse_pressure,
    peak_or_current,
    pressure_totals,
    single,
)
from scheduler.errors import CgroupError
from scheduler.timeconv import NS_PER_SECOND

log = structlog.get_logger(__name__)

# The main hierarchy (exists, children, the pid walk) is the first one mounted in this order.
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "blkio")
CFS_PERIOD_US = 100_000
# The kernel rejects quotas under 1 ms (min_cfs_quota_period in kernel/sched/core.c).
MIN_CFS_QUOTA_US = 1_000
DEFAULT_SHARES = 1024


# The counter files, in the hierarchy each lives in ("unified": the cgroup2 mirror, for PSI).
COUNTERS = (
    CounterFile("cpuacct.usage", "cpuacct", "cpuacct.usage", single("cpu_ns"), "billed"),
    CounterFile(
        "cpuacct.usage_user", "cpuacct", "cpuacct.usage_user", single("cpu_user_ns"), "monitor"
    ),
    CounterFile(
        "cpuacct.usage_sys", "cpuacct", "cpuacct.usage_sys", single("cpu_system_ns"), "monitor"
    ),
    CounterFile(
        "v1 cpu.stat",
        "cpu",
        "cpu.stat",
        keyed((b"throttled_time ", "cpu_throttled_ns", 1)),
        "sample",
    ),
    CounterFile(
        "memory.usage_in_bytes",
        "memory",
        "memory.usage_in_bytes",
        single("memory_current_bytes"),
        "gauge",
    ),
    CounterFile(
        "memory.max_usage_in_bytes",
        "memory",
        "memory.max_usage_in_bytes",
        single("memory_peak_bytes"),
        "billed",
    ),
    CounterFile(
        "memory.oom_control",
        "memory",
        "memory.oom_control",
        keyed((b"oom_kill ", "oom_kills", 1)),
        "gauge",
    ),
    CounterFile(
        "blkio bytes",
        "blkio",
        "blkio.throttle.io_service_bytes_recursive",
        blkio_sums("io_read_bytes", "io_write_bytes"),
        "billed",
    ),
    CounterFile(
        "blkio ops",
        "blkio",
        "blkio.throttle.io_serviced_recursive",
        blkio_sums("io_read_ops", "io_write_ops"),
        "sample",
    ),
    CounterFile("pids.current", "pids", "pids.current", single("pids"), "sample"),
    CounterFile(
        "cpu.pressure",
        "unified",
        "cpu.pressure",
        pressure_totals("cpu_pressure_some_us", None),
        "sample",
    ),
    CounterFile(
        "memory.pressure",
        "unified",
        "memory.pressure",
        pressure_totals("memory_pressure_some_us", "memory_pressure_full_us"),
        "sample",
    ),
    CounterFile(
        "io.pressure",
        "unified",
        "io.pressure",
        pressure_totals("io_pressure_some_us", "io_pressure_full_us"),
        "sample",
    ),
)
_COUNTERS_BY_NAME = {c.name: c for c in COUNTERS}
# What read_usage reads; of those, a missing file means the cgroup is gone (an error), but
# for the user/system split, which kernels before 4.16 lack (cpuacct.stat then).
_USAGE = frozenset(
    {
        "cpuacct.usage",
        "cpuacct.usage_user",
        "cpuacct.usage_sys",
        "memory.usage_in_bytes",
        "memory.max_usage_in_bytes",
        "memory.oom_control",
        "blkio bytes",
        "pids.current",
    }
)
_USAGE_OPTIONAL = frozenset({"cpuacct.usage_user", "cpuacct.usage_sys"})


def cfs_quota_us(cores: float) -> int:
    """cpu.cfs_quota_us for ``cores`` CPUs over a 100 ms period."""
    return max(MIN_CFS_QUOTA_US, round(cores * CFS_PERIOD_US))


def cpu_shares(weight: int) -> int:
    """cpu.shares for a v2-scale weight (100 -> 1024); the kernel's minimum is 2."""
    return max(2, weight * DEFAULT_SHARES // 100)


class V1Driver:
    """cgroup v1: ``mounts`` maps controllers to mount points, ``root`` is relative to each."""

    name: DriverName = "v1"
    cpu_resolution_ns: int = 1
    freeze_timeout: float = 2.0
    kill_timeout: float = 5.0

    def __init__(self, mounts: Mapping[str, Path], root: str, *, unified: Path | None = None):
        self._rel_root = fs.check_root(root)
        self._mounts = {c: mounts[c] for c in V1_CONTROLLERS if c in mounts}
        if not self._mounts:
            raise CgroupError(f"none of the v1 controllers {', '.join(V1_CONTROLLERS)} is mounted")
        self._bases = {c: m / self._rel_root for c, m in self._mounts.items()}
        # One (mount, root dir) per hierarchy: co-mounted controllers share one directory.
        hierarchies = dict.fromkeys((m, m / self._rel_root) for m in self._mounts.values())
        if unified is not None:
            hierarchies[(unified, unified / self._rel_root)] = None
        self._hierarchies = tuple(hierarchies)
        # The same as strings: a launch's plan joins them with the job's path (cheaper than
        # pathlib, and a plan is made for every launch).
        self._base_texts = {c: str(b) for c, b in self._bases.items()}
        self._hierarchy_texts = tuple(str(base) for _, base in self._hierarchies)
        self._unified = unified / self._rel_root if unified is not None else None
        self._main = next(iter(self._bases.values()))
        self._memsw: bool | None = None

    def __repr__(self) -> str:
        return f"V1Driver({sorted(self._mounts)}, unified={self._unified is not None})"

    @property
    def controllers(self) -> frozenset[str]:
        """The v1 controllers this driver manages (mounted ones only)."""
        return frozenset(self._mounts)

    @property
    def has_unified(self) -> bool:
        """True when a cgroup2 mount mirrors the tree (cgroup.kill, cgroup.events, PSI)."""
        return self._unified is not None

    def directory(self, controller: str, path: CgroupPath) -> Path:
        """The directory of ``path`` in ``controller``'s hierarchy ("unified" for cgroup2)."""
        if controller == "unified":
            if self._unified is None:
                raise CgroupError("no cgroup2 mount next to the v1 hierarchies")
            return self._unified / path.rel
        return self._bases[controller] / path.rel

    def directories(self, path: CgroupPath) -> tuple[Path, ...]:
        """``path`` in every hierarchy, the cgroup2 mirror last."""
        return tuple(base / path.rel for _, base in self._hierarchies)

    # -- limits ----------------------------------------------------------------------------

    def _has_memsw(self) -> bool:
        # memory.memsw.* exist only with swap accounting (CONFIG_MEMCG_SWAP, swapaccount=1).
        if self._memsw is None:
            self._memsw = (self._mounts["memory"] / "memory.memsw.limit_in_bytes").exists()
        return self._memsw

    def _check(self, limits: Limits) -> None:
        if limits.cpu_cores is not None and not limits.cpu_cores > 0:
            raise CgroupError(f"cpu_cores must be > 0, got {limits.cpu_cores}")
        if limits.weight is not None and not 1 <= limits.weight <= 10_000:
            raise CgroupError(f"weight must be in 1..10000, got {limits.weight}")
        if limits.memory_bytes is not None and limits.memory_bytes <= 0:
            raise CgroupError(f"memory_bytes must be > 0, got {limits.memory_bytes}")
        if limits.pids_max is not None and limits.pids_max < 0:
            raise CgroupError(f"pids_max must be >= 0, got {limits.pids_max}")
        check_io(limits)
        io = limits.io_read_bps or limits.io_write_bps if limits.io_devices else None
        for controller, field, value in (
            ("blkio", "io_read_bps/io_write_bps", io),
            ("cpu", "cpu_cores", limits.cpu_cores),
            ("cpu", "weight", limits.weight),
            ("memory", "memory_bytes", limits.memory_bytes),
            ("pids", "pids_max", limits.pids_max),
        ):
            if value is not None and controller not in self._mounts:
                mounted = " ".join(sorted(self._mounts))
                raise CgroupError(
                    f"cgroup controller {controller!r} is not mounted (needed for {field}); "
                    f"mounted v1 controllers: {mounted}"
                )

    def _clamp_quota(self, cpu_dir: str, quota: int) -> int:
        """``quota`` lowered to the nearest limited ancestor's share of a CPU.

        v1 refuses a quota above an ancestor's with EINVAL (tg_cfs_schedulable_down in
        kernel/sched/core.c), where v2 silently applies the smaller one; clamping gives v1
        the v2 behaviour instead of a start error.
        """
        below_mount = f"{self._mounts['cpu']}/"
        node = cpu_dir.rpartition("/")[0]
        while node.startswith(below_mount):
            text = fs.read_optional(f"{node}/cpu.cfs_quota_us")
            parent_quota = int(text) if text else -1
            if parent_quota > 0:
                period = int(fs.read_file(f"{node}/cpu.cfs_period_us"))
                return min(quota, parent_quota * CFS_PERIOD_US // period)
            node = node.rpartition("/")[0]
        return quota

    def _leaf(self, controller: str, path: CgroupPath) -> str:
        return f"{self._base_texts[controller]}/{path.rel_text}"

    def _limit_writes(self, path: CgroupPath, limits: Limits) -> list[tuple[str, str]]:
        """The writes for a fresh cgroup (every file at its default): set limits only."""
        writes: list[tuple[str, str]] = []
        if limits.cpu_cores is not None or limits.weight is not None:
            cpu = self._leaf("cpu", path)
            if limits.cpu_cores is not None:
                quota = self._clamp_quota(cpu, cfs_quota_us(limits.cpu_cores))
                writes.append((f"{cpu}/cpu.cfs_period_us", str(CFS_PERIOD_US)))
                writes.append((f"{cpu}/cpu.cfs_quota_us", str(quota)))
            if limits.weight is not None:
                writes.append((f"{cpu}/cpu.shares", str(cpu_shares(limits.weight))))
        if limits.memory_bytes is not None:
            memory = self._leaf("memory", path)
            # Lowering from unlimited: memory first, as memsw may never be below it.
            writes.append((f"{memory}/memory.limit_in_bytes", str(limits.memory_bytes)))
            if self._has_memsw():
                # Same value for memory+swap, so swap cannot be used to escape the limit.
                writes.append((f"{memory}/memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
        if limits.pids_max is not None:
            writes.append((f"{self._leaf('pids', path)}/pids.max", str(limits.pids_max)))
        writes.extend(self._io_writes(path, limits, reset=False))
        return writes

    def _io_writes(self, path: CgroupPath, limits: Limits, *, reset: bool) -> list[tuple[str, str]]:
        """blkio.throttle rules, one per device and direction ("MAJ:MIN 0" removes one)."""
        if "blkio" not in self._mounts:
            return []
        if not reset and limits.io_read_bps is None and limits.io_write_bps is None:
            return []  # a launch without io limits (most): no path to build
        blkio = self.directory("blkio", path)
        writes = []
        for direction, bps in (("read", limits.io_read_bps), ("write", limits.io_write_bps)):
            if bps is None and not reset:
                continue
            for device in limits.io_devices:
                rule = f"{device} {bps or 0}"
                writes.append((f"{blkio}/blkio.throttle.{direction}_bps_device", rule))
        return writes

    def _write_io_weight(self, path: CgroupPath, weight: int | None) -> None:
        """The weight as blkio.weight (CFQ, 10..1000, default 500) or blkio.bfq.weight (BFQ,
        1..1000, default 100); without either, disk time is not shared by weight: skipped."""
        blkio = self.directory("blkio", path)
        value = weight or 100
        if (blkio / "blkio.weight").exists():
            fs.write_file(blkio / "blkio.weight", str(min(1000, max(10, value * 5))))
        elif (blkio / "blkio.bfq.weight").exists():
            fs.write_file(blkio / "blkio.bfq.weight", str(min(1000, value)))
        elif weight is not None:
            log.info("io_weight_unsupported", cgroup=str(blkio), weight=weight)

    def _set_memory(self, memory: Path, value: str) -> None:
        limit = memory / "memory.limit_in_bytes"
        if not self._has_memsw():
            fs.write_file(limit, value)
            return
        memsw = memory / "memory.memsw.limit_in_bytes"
        try:
            fs.write_file(limit, value)
        except CgroupError as exc:
            # Raising: memory.limit_in_bytes may not exceed memory.memsw.limit_in_bytes
            # (EINVAL from mem_cgroup_resize_max), so memsw has to go up first.
            if fs.cause_errno(exc) != errno.EINVAL:
                raise
            fs.write_file(memsw, value)
            fs.write_file(limit, value)
            return
        fs.write_file(memsw, value)

    def ensure(self, path: CgroupPath, limits: Limits) -> None:
        """Create ``path`` and its parents in every hierarchy and set exactly ``limits``
        (an unset limit is reset to unlimited, so a dropped limit goes away)."""
        self._check(limits)
        for mount, _ in self._hierarchies:
            fs.make_dirs(mount, self._rel_root / path.rel)
        if "cpu" in self._mounts:
            cpu = self.directory("cpu", path)
            if limits.cpu_cores is not None:
                quota = self._clamp_quota(str(cpu), cfs_quota_us(limits.cpu_cores))
                fs.write_file(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                fs.write_file(cpu / "cpu.cfs_quota_us", str(quota))
            else:
                fs.write_file(cpu / "cpu.cfs_quota_us", "-1")
            shares = DEFAULT_SHARES if limits.weight is None else cpu_shares(limits.weight)
            fs.write_file(cpu / "cpu.shares", str(shares))
        if "memory" in self._mounts:
            memory = "-1" if limits.memory_bytes is None else str(limits.memory_bytes)
            self._set_memory(self.directory("memory", path), memory)
        if "pids" in self._mounts:
            pids = "max" if limits.pids_max is None else str(limits.pids_max)
            fs.write_file(self.directory("pids", path) / "pids.max", pids)
        if "blkio" in self._mounts:
            for file, value in self._io_writes(path, limits, reset=True):
                fs.write_file(file, value)
            self._write_io_weight(path, limits.weight)

    def plan(self, path: CgroupPath, limits: Limits) -> LaunchPlan:
        """The leaf ``path`` in every hierarchy (parents must exist via ensure())."""
        if not path.parts:
            raise CgroupError("plan() needs a job path below the root, got the root itself")
        self._check(limits)
        leaves = tuple(f"{base}/{path.rel_text}" for base in self._hierarchy_texts)
        return LaunchPlan(
            mkdirs=leaves,
            writes=tuple(self._limit_writes(path, limits)),
            procs=tuple(f"{leaf}/cgroup.procs" for leaf in leaves),
            dirs=leaves,
        )

    # -- observing -------------------------------------------------------------------------

    def counter_files(self, path: CgroupPath) -> list[tuple[CounterFile, Path]]:
        present = self._mounts.keys() | ({"unified"} if self._unified is not None else set())
        dirs: dict[str, Path] = {}
        files = []
        for counter in COUNTERS:
            if counter.where not in present:
                continue
            if counter.where not in dirs:
                dirs[counter.where] = self.directory(counter.where, path)
            files.append((counter, dirs[counter.where] / counter.file))
        return files

    def counter_file(self, name: str) -> CounterFile:
        return _COUNTERS_BY_NAME[name]

    def read_usage(self, path: CgroupPath) -> Usage:
        """Counters of ``path`` and its descendants; unmounted controllers count 0."""
        values: Values = {}
        for counter, file in self.counter_files(path):
            if counter.name not in _USAGE:
                continue
            if counter.name in _USAGE_OPTIONAL:
                text = fs.read_optional(file)
                if text is None:
                    continue
            else:
                text = fs.read_file(file)
            counter.parser.parse(text.encode(), values)
        if "cpuacct" in self._mounts and not (
            "cpu_user_ns" in values and "cpu_system_ns" in values
        ):
            # Before 4.16 only cpuacct.stat existed, in USER_HZ ticks.
            acct = self.directory("cpuacct", path)
            ticks = parse_flat_keyed(fs.read_file(acct / "cpuacct.stat"))
            hz = os.sysconf("SC_CLK_TCK")
            values["cpu_user_ns"] = ticks.get("user", 0) * NS_PER_SECOND // hz
            values["cpu_system_ns"] = ticks.get("system", 0) * NS_PER_SECOND // hz
        return usage_of(peak_or_current(values))

    def read_pressure(self, path: CgroupPath, resource: str) -> Pressure:
        """PSI of ``path`` for ``resource`` ("cpu", "memory", "io"), from the cgroup2 mirror."""
        return parse_pressure(
            fs.read_file(self.directory("unified", path) / f"{resource}.pressure")
        )

    def populated(self, path: CgroupPath) -> bool:
        """The mirror's cgroup.events when there is one, else any pid at or below ``path``."""
        if self._unified is not None:
            events = fs.read_optional(self.emptiness_file(path))
            if events is not None:
                return parse_flat_keyed(events).get("populated", 0) == 1
        return bool(fs.pids_below(self._main / path.rel))

    def emptiness_file(self, path: CgroupPath) -> str:
        """The cgroup2 mirror's cgroup.events, else cgroup.procs in the first hierarchy."""
        if self._unified is not None:
            return f"{self._unified}/{path.rel_text}/cgroup.events"
        return f"{self._main}/{path.rel_text}/cgroup.procs"

    def exists(self, path: CgroupPath) -> bool:
        return (self._main / path.rel).is_dir()

    def children(self, path: CgroupPath) -> list[str]:
        return [n for n in fs.child_dirs(self._main / path.rel) if not n.startswith(".")]

    def helper_dir(self, name: str) -> Path:
        return self._main / f".{check_segment(name)}"

    # -- freezing --------------------------------------------------------------------------

    def freeze(self, path: CgroupPath) -> None:
        """Freeze with the v1 freezer (or the cgroup2 mirror when no freezer is mounted)."""
        if "freezer" in self._mounts:
            self._freeze_v1(self.directory("freezer", path))
        elif self._unified is not None:
            self._freeze_unified(self._unified / path.rel)
        else:
            raise CgroupError("cannot freeze: no freezer controller and no cgroup2 mount")

    def thaw(self, path: CgroupPath) -> None:
        if "freezer" in self._mounts:
            state_file = self.directory("freezer", path) / "freezer.state"
            fs.write_file(state_file, "THAWED")
            # Thawing is synchronous; anything else means an ancestor is still frozen.
            state = parse_freezer_state(fs.read_file(state_file))
            if state != "THAWED":
                raise CgroupError(f"{state_file} is {state} after thaw: an ancestor is frozen")
        elif self._unified is not None:
            directory = self._unified / path.rel
            fs.write_file(directory / "cgroup.freeze", "0")
            if not fs.wait_until(lambda: self._unified_frozen(directory) == 0, self.freeze_timeout):
                raise CgroupError(f"{directory} is still frozen: an ancestor is frozen")
        else:
            raise CgroupError("cannot thaw: no freezer controller and no cgroup2 mount")

    def _freeze_v1(self, directory: Path) -> None:
        """Write FROZEN, read back, retry while FREEZING, thaw again if the bound runs out.

        FREEZING means some task has not entered the refrigerator yet (it is in an
        uninterruptible sleep, or was forked or attached after the request). Each write of
        FROZEN re-sends the request to every task of the cgroup (freezer_apply_state), and
        runc found that an occasional thaw-then-refreeze gets cgroups whose tasks keep forking
        unstuck (libcontainer fs/freezer.go); v1 has no event to wait on, so this polls.
        """
        state_file = directory / "freezer.state"
        deadline = time.monotonic() + self.freeze_timeout
        attempt = 0
        while True:
            fs.write_file(state_file, "FROZEN")
            if parse_freezer_state(fs.read_file(state_file)) == "FROZEN":
                return
            attempt += 1
            if time.monotonic() >= deadline:
                fs.write_file(state_file, "THAWED")
                raise CgroupError(
                    f"{directory} stayed FREEZING for {self.freeze_timeout} s; thawed it again"
                )
            if attempt % 50 == 0:
                fs.write_file(state_file, "THAWED")
            time.sleep(min(0.001 * attempt, 0.01))

    @staticmethod
    def _unified_frozen(directory: Path) -> int:
        return parse_flat_keyed(fs.read_file(directory / "cgroup.events")).get("frozen", 0)

    def _freeze_unified(self, directory: Path) -> None:
        # As in the v2 driver: cgroup.freeze records the request, cgroup.events confirms it.
        fs.write_file(directory / "cgroup.freeze", "1")
        if fs.wait_until(lambda: self._unified_frozen(directory) == 1, self.freeze_timeout):
            return
        fs.write_file(directory / "cgroup.freeze", "0")
        raise CgroupError(f"{directory} did not report frozen within {self.freeze_timeout} s")

    def _thaw_below(self, path: CgroupPath) -> None:
        """Thaw ``path`` and every descendant that was frozen on its own: a v1 task frozen
        in the refrigerator acts on SIGKILL only once thawed, and thawing a parent leaves a
        self-frozen child frozen (freezer.self_freezing)."""
        if "freezer" not in self._mounts:
            return
        for directory in fs.walk_deepest_first(self.directory("freezer", path)):
            state_file = directory / "freezer.state"
            try:
                fs.write_file(state_file, "THAWED")
            except CgroupError as exc:
                # A child cgroup removed meanwhile is fine.
                if fs.cause_errno(exc) != errno.ENOENT:
                    raise

    def _release_frozen(self, path: CgroupPath) -> None:
        """Move the tasks of ``path`` that a frozen ancestor holds into the scheduler's root.

        Thawing ``path`` cannot help while an ancestor (its tenant) is frozen, but attaching
        a task to a thawed cgroup thaws it (freezer_attach in kernel/cgroup/legacy_freezer.c)
        and its pending SIGKILL then ends it; the other jobs of the tenant stay frozen.
        """
        if "freezer" not in self._mounts or not path.parts:
            return
        directory = self.directory("freezer", path)
        state = fs.read_optional(directory / "freezer.state")
        if state is None or parse_freezer_state(state) == "THAWED":
            return
        target = self._bases["freezer"] / "cgroup.procs"
        for pid in fs.pids_below(directory):
            try:
                fs.write_file(target, str(pid))
            except CgroupError as exc:
                if fs.cause_errno(exc) != errno.ESRCH:  # already gone
                    raise

    def _thaw_for_kill(self, path: CgroupPath) -> None:
        self._thaw_below(path)
        self._release_frozen(path)

    # -- killing ---------------------------------------------------------------------------

    def kill(self, path: CgroupPath) -> None:
        """SIGKILL everything in ``path`` and below, frozen tasks included, and wait for it.

        With the cgroup2 mirror: cgroup.kill (race-free against forks), then thaw so that
        v1-frozen tasks can act on the signal (moving them out from under a frozen tenant if
        need be). Without it, or for tasks that were only put into the v1 hierarchies:
        freeze, signal every pid, thaw, until none is left.
        """
        kill_in_steps(self, path)

    def start_kill(self, path: CgroupPath) -> bool | None:
        if not any(d.is_dir() for d in self.directories(path)):
            return None
        self.release_cpu(path)
        unified = self._unified / path.rel if self._unified is not None else None
        if unified is None or not (unified / "cgroup.kill").exists():
            return False
        fs.write_file(unified / "cgroup.kill", "1")
        self._thaw_for_kill(path)
        return True

    def finish_kill(self, path: CgroupPath, sent: bool, emptied: bool) -> None:
        main = self._main / path.rel
        if emptied and not fs.pids_below(main):
            return
        fs.kill_until_empty(
            main,
            lambda: fs.pids_below(main),
            freeze=lambda: self._try_freeze(path),
            thaw=lambda: self._thaw_for_kill(path),
            timeout=self.kill_timeout,
        )

    def release_cpu(self, path: CgroupPath) -> None:
        """Lift the cfs quota of ``path`` and below. On Linux 6.18 (task-based CFS
        throttling) tasks that must exit while their cgroup is throttled can stall for
        minutes, a SIGKILL notwithstanding; a dying job needs no limit (its cpu stays billed)."""
        if "cpu" not in self._mounts:
            return
        for directory in fs.walk_deepest_first(self.directory("cpu", path)):
            with contextlib.suppress(CgroupError):
                fs.write_file(directory / "cpu.cfs_quota_us", "-1")

    def _try_freeze(self, path: CgroupPath) -> bool:
        if "freezer" not in self._mounts:
            return False
        try:
            self._freeze_v1(self.directory("freezer", path))
        except CgroupError:
            return False
        return True

    # -- removing --------------------------------------------------------------------------

    def remove(self, path: CgroupPath) -> None:
        """rmdir ``path`` in every hierarchy (EBUSY retried briefly, missing is fine)."""
        for base in self._hierarchy_texts:
            fs.remove_dir(f"{base}/{path.rel_text}")

    def remove_tree(self, path: CgroupPath) -> None:
        """Kill everything under ``path``, then remove it deepest-first in every hierarchy."""
        self.kill(path)
        for directory in self.directories(path):
            for node in fs.walk_deepest_first(directory):
                fs.remove_dir(node)
