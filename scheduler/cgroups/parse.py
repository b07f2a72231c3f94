"""Pure parsers for the kernel text the cgroup drivers read: no I/O, no state.

Each function takes the text of one file (as read from /proc or cgroupfs) and returns
values in base units. Unknown keys and future fields are ignored, so a newer kernel that
adds a line to cpu.stat or memory.events does not break the agent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from scheduler.errors import CgroupError

Mode = Literal["v1", "hybrid", "v2"]
FreezerState = Literal["THAWED", "FREEZING", "FROZEN"]

# Controllers a cgroup v1 mount can carry in its super options; anything else there
# (rw, xattr, name=systemd, release_agent=..., noprefix, clone_children) is not a controller.
V1_CONTROLLER_NAMES = frozenset(
    [
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    ]
)

# mountinfo escapes space, tab, newline and backslash in paths as \ooo (fs/proc_namespace.c).
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

# v1 reports "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages for memory,
# near 2**63); anything above 2**62 bytes is treated as unlimited.
_UNLIMITED_ABOVE = 1 << 62


@dataclass(frozen=True)
class Layout:
    """Where the cgroup hierarchies are mounted, as read from /proc/self/mountinfo.

    ``v1`` maps each v1 controller to its mount point; co-mounted controllers
    (``cpu,cpuacct``) map to the same path. ``unified`` is the cgroup2 mount, if any.
    """

    v1: Mapping[str, str]
    unified: str | None
    mode: Mode


@dataclass(frozen=True)
class IoBytes:
    """Bytes read and written, summed over every block device."""

    read: int = 0
    write: int = 0


@dataclass(frozen=True)
class PressureLine:
    """One line of a PSI file: averages in percent, total stall time in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@dataclass(frozen=True)
class Pressure:
    """A cpu/memory/io.pressure file; ``full`` is None on kernels that omit it for cpu."""

    some: PressureLine
    full: PressureLine | None


def _unescape(path: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def parse_mountinfo(text: str) -> Layout:
    """The cgroup layout described by /proc/self/mountinfo text.

    The first mount of each controller wins (later ones are bind mounts of the same
    hierarchy). Raises CgroupError when no cgroup filesystem is mounted at all.
    """
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        fields = line.split()
        # id parent maj:min root mount_point options [optional...] - fstype source super
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 2:
            continue
        fstype = fields[sep + 1]
        mount_point = _unescape(fields[4])
        if fstype == "cgroup2":
            unified = unified or mount_point
        elif fstype == "cgroup" and len(fields) > sep + 3:
            for option in fields[sep + 3].split(","):
                if option in V1_CONTROLLER_NAMES:
                    v1.setdefault(option, mount_point)
    if v1 and unified:
        mode: Mode = "hybrid"
    elif v1:
        mode = "v1"
    elif unified:
        mode = "v2"
    else:
        raise CgroupError("no cgroup filesystem is mounted (none in mountinfo)")
    return Layout(v1=v1, unified=unified, mode=mode)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.events, cgroup.events, memory.oom_control,
    cpuacct.stat, memory.stat, pids.events) as a dict; non-integer lines are skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def parse_io_stat(text: str) -> IoBytes:
    """v2 io.stat (``8:0 rbytes=.. wbytes=.. rios=..``), rbytes and wbytes summed over devices."""
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return IoBytes(read=read, write=write)


def parse_blkio_service_bytes(text: str) -> IoBytes:
    """v1 blkio.throttle.io_service_bytes(_recursive): ``8:0 Read N`` lines summed over
    devices; the per-device and grand ``Total`` lines are ignored (they double count)."""
    read = write = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        _, op, value = fields
        if op == "Read":
            read += int(value)
        elif op == "Write":
            write += int(value)
    return IoBytes(read=read, write=write)


def parse_limit(text: str) -> int | None:
    """A limit file's value; None for no limit (``max``, v1's ``-1`` or its near-2**63)."""
    value = text.strip()
    if value in ("max", "-1"):
        return None
    number = int(value)
    return None if number > _UNLIMITED_ABOVE else number


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """v2 cpu.max ``<quota|max> <period>`` as (quota_us or None, period_us)."""
    quota, _, period = text.strip().partition(" ")
    return (None if quota == "max" else int(quota)), int(period or "100000")


def parse_controllers(text: str) -> frozenset[str]:
    """cgroup.controllers / cgroup.subtree_control: space-separated names (``+`` tolerated)."""
    return frozenset(name.lstrip("+") for name in text.split())


def parse_pids(text: str) -> list[int]:
    """The pids of a ``cgroup.procs`` file, one per line."""
    return [int(line) for line in text.split()]


def parse_freezer_state(text: str) -> FreezerState:
    """v1 freezer.state: THAWED, FREEZING or FROZEN."""
    state = text.strip()
    if state == "THAWED":
        return "THAWED"
    if state == "FREEZING":
        return "FREEZING"
    if state == "FROZEN":
        return "FROZEN"
    raise ValueError(f"unknown freezer.state {state!r}")


def _pressure_line(line: str) -> PressureLine:
    fields = dict(field.partition("=")[::2] for field in line.split()[1:])
    return PressureLine(
        avg10=float(fields["avg10"]),
        avg60=float(fields["avg60"]),
        avg300=float(fields["avg300"]),
        total_us=int(fields["total"]),
    )


def parse_pressure(text: str) -> Pressure:
    """A PSI file (``some avg10=.. avg60=.. avg300=.. total=..`` and optional ``full``)."""
    some: PressureLine | None = None
    full: PressureLine | None = None
    for line in text.splitlines():
        kind = line.split(" ", 1)[0]
        if kind == "some":
            some = _pressure_line(line)
        elif kind == "full":
            full = _pressure_line(line)
    if some is None:
        raise ValueError("pressure text has no 'some' line")
    return Pressure(some=some, full=full)


# -- counter files, straight from the bytes a pread returns ----------------------------------
#
# The sampler re-reads every job's counter files on every sweep, so these parse bytes without
# decoding and fill one dict of named values (base units: cpu in ns, pressure totals in us).
# Each driver names its counter files and gives each one of these (cgroups/v1.py, v2.py): the
# sampler, the final read at exit and the drivers' own read_usage all go through them.

Values = dict[str, int | None]


@dataclass(frozen=True)
class CounterParser:
    """How one counter file becomes named values: ``parse(data, values)`` sets (some of)
    ``fields`` in ``values``."""

    fields: tuple[str, ...]
    parse: Callable[[bytes, Values], None]


def _find(data: bytes, key: bytes) -> int | None:
    """The integer after ``key`` at the start of a line of ``data`` (None if absent)."""
    if data.startswith(key):
        start = len(key)
    else:
        at = data.find(b"\n" + key)
        if at < 0:
            return None
        start = at + 1 + len(key)
    end = data.find(b"\n", start)
    return int(data[start:end] if end >= 0 else data[start:])


def single(field: str) -> CounterParser:
    """A file holding one integer (cpuacct.usage, memory.current, pids.current)."""

    def parse(data: bytes, values: Values) -> None:
        values[field] = int(data)

    return CounterParser((field,), parse)


def keyed(*pairs: tuple[bytes, str, int]) -> CounterParser:
    """Fields from ``key value`` lines: (key with its trailing space, field, multiplier)."""

    def parse(data: bytes, values: Values) -> None:
        for key, field, scale in pairs:
            found = _find(data, key)
            if found is not None:
                values[field] = found * scale

    return CounterParser(tuple(field for _, field, _ in pairs), parse)


def pressure_totals(some_field: str, full_field: str | None) -> CounterParser:
    """PSI totals (microseconds) of the ``some`` and ``full`` lines."""

    def parse(data: bytes, values: Values) -> None:
        at = data.find(b"total=")
        if at >= 0 and data.startswith(b"some"):
            end = data.find(b"\n", at)
            values[some_field] = int(data[at + 6 : end if end >= 0 else None])
        full = data.find(b"\nfull ")
        if full_field is not None and full >= 0:
            at = data.find(b"total=", full)
            end = data.find(b"\n", at)
            values[full_field] = int(data[at + 6 : end if end >= 0 else None])

    fields = (some_field,) if full_field is None else (some_field, full_field)
    return CounterParser(fields, parse)


def blkio_sums(read_field: str, write_field: str) -> CounterParser:
    """v1 ``8:0 Read N`` lines summed over devices (per-device and grand Totals ignored, as
    in :func:`parse_blkio_service_bytes`)."""

    def parse(data: bytes, values: Values) -> None:
        read = write = 0
        for line in data.split(b"\n"):
            fields = line.split()
            if len(fields) == 3:
                if fields[1] == b"Read":
                    read += int(fields[2])
                elif fields[1] == b"Write":
                    write += int(fields[2])
        values[read_field], values[write_field] = read, write

    return CounterParser((read_field, write_field), parse)


def _io_stat(data: bytes, values: Values) -> None:
    sums = {b"rbytes": 0, b"wbytes": 0, b"rios": 0, b"wios": 0}
    for line in data.split(b"\n"):
        for field in line.split()[1:]:
            key, _, value = field.partition(b"=")
            if key in sums:
                sums[key] += int(value)
    values["io_read_bytes"], values["io_write_bytes"] = sums[b"rbytes"], sums[b"wbytes"]
    values["io_read_ops"], values["io_write_ops"] = sums[b"rios"], sums[b"wios"]


# v2 io.stat summed over devices: rbytes, wbytes, rios, wios.
IO_STAT = CounterParser(
    ("io_read_bytes", "io_write_bytes", "io_read_ops", "io_write_ops"), _io_stat
)


def peak_or_current(values: Values) -> Values:
    """``values`` with the memory peak defaulting to the current usage: without a peak file
    (v2 before 5.19) the current value is the best there is."""
    if "memory_peak_bytes" not in values and "memory_current_bytes" in values:
        values["memory_peak_bytes"] = values["memory_current_bytes"]
    return values
