"""Kept-open counter files of one cgroup, re-read with pread on every sweep.

Opening a cgroupfs file costs several times more than re-reading it (an open walks kernfs
and allocates a seq_file; a pread of an open one only regenerates the text), so the sampler
opens a cgroup's counter files once and re-reads them with ``os.pread`` at offset 0 on every
sweep. The values read here are the same files the drivers' ``read_usage`` reads, so that a
sampled cumulative value and the final one at exit are the same counter.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from scheduler.cgroups.base import CgroupDriver, CgroupPath, Usage
from scheduler.cgroups.v1 import V1Driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.runtime.spec import FinalRead

_READ_SIZE = 4096  # every counter file read here is far smaller (io.stat: one line per disk)


@dataclass(frozen=True)
class Sample:
    """Every counter of one cgroup at one instant, in base units (cpu in nanoseconds).

    Pressure totals are microseconds of stall (PSI ``total=``); None where the kernel has no
    pressure file for the cgroup.
    """

    cpu_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cpu_throttled_ns: int = 0
    memory_current_bytes: int = 0
    memory_peak_bytes: int = 0
    oom_kills: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    io_read_ops: int = 0
    io_write_ops: int = 0
    pids: int = 0
    cpu_pressure_some_us: int | None = None
    memory_pressure_some_us: int | None = None
    memory_pressure_full_us: int | None = None
    io_pressure_some_us: int | None = None
    io_pressure_full_us: int | None = None

    def usage(self) -> Usage:
        """The driver-level :class:`Usage` view of this sample."""
        return Usage(
            cpu_ns=self.cpu_ns,
            cpu_user_ns=self.cpu_user_ns,
            cpu_system_ns=self.cpu_system_ns,
            memory_current_bytes=self.memory_current_bytes,
            memory_peak_bytes=self.memory_peak_bytes,
            io_read_bytes=self.io_read_bytes,
            io_write_bytes=self.io_write_bytes,
            oom_kills=self.oom_kills,
            pids_current=self.pids,
        )


# Logical counter -> file, per driver. Each entry is parsed by the function named beside it.
CounterFiles = dict[str, Path]


def counter_files(driver: CgroupDriver, path: CgroupPath, *, final: bool = False) -> CounterFiles:
    """The files that hold ``path``'s counters under ``driver`` (absent controllers left out);
    ``final``: only those the final read at exit needs (see FINAL_FILES)."""
    return _all_counter_files(driver, path, FINAL_FILES if final else None)


# cgroup v1: (logical counter, hierarchy, file); "unified" is the cgroup2 mirror.
_V1_FILES = (
    ("cpuacct.usage", "cpuacct", "cpuacct.usage"),
    ("cpuacct.usage_user", "cpuacct", "cpuacct.usage_user"),
    ("cpuacct.usage_sys", "cpuacct", "cpuacct.usage_sys"),
    ("v1 cpu.stat", "cpu", "cpu.stat"),
    ("memory.usage_in_bytes", "memory", "memory.usage_in_bytes"),
    ("memory.max_usage_in_bytes", "memory", "memory.max_usage_in_bytes"),
    ("memory.oom_control", "memory", "memory.oom_control"),
    ("blkio bytes", "blkio", "blkio.throttle.io_service_bytes_recursive"),
    ("blkio ops", "blkio", "blkio.throttle.io_serviced_recursive"),
    ("pids.current", "pids", "pids.current"),
    ("cpu.pressure", "unified", "cpu.pressure"),
    ("memory.pressure", "unified", "memory.pressure"),
    ("io.pressure", "unified", "io.pressure"),
)


def _all_counter_files(
    driver: CgroupDriver, path: CgroupPath, wanted: frozenset[str] | None = None
) -> CounterFiles:
    files: CounterFiles = {}
    if isinstance(driver, V1Driver):
        present = driver.controllers | ({"unified"} if driver.has_unified else set())
        dirs: dict[str, Path] = {}
        for name, hierarchy, file in _V1_FILES:
            if hierarchy not in present or (wanted is not None and name not in wanted):
                continue
            if hierarchy not in dirs:
                dirs[hierarchy] = driver.directory(hierarchy, path)
            files[name] = dirs[hierarchy] / file
        return files
    if isinstance(driver, V2Driver):
        d = driver.directory(path)
        for name in (
            "cpu.stat",
            "memory.current",
            "memory.peak",
            "memory.events",
            "io.stat",
            "pids.current",
            "cpu.pressure",
            "memory.pressure",
            "io.pressure",
        ):
            if wanted is None or name in wanted:
                files[name] = d / name
        return files
    raise TypeError(f"no counter files known for driver {driver!r}")


Values = dict[str, int | None]
Parser = Callable[[bytes, Values], None]


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


def _single(field: str) -> Parser:
    def parse(data: bytes, values: Values) -> None:
        values[field] = int(data)

    return parse


def _keyed(*pairs: tuple[bytes, str, int]) -> Parser:
    """Fields from ``key value`` lines: (key with its trailing space, field, multiplier)."""

    def parse(data: bytes, values: Values) -> None:
        for key, field, scale in pairs:
            found = _find(data, key)
            if found is not None:
                values[field] = found * scale

    return parse


def _pressure(some_field: str, full_field: str | None) -> Parser:
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

    return parse


def _blkio(read_field: str, write_field: str) -> Parser:
    """v1 ``8:0 Read N`` lines summed over devices (per-device and grand Totals ignored)."""

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

    return parse


def _io_stat(data: bytes, values: Values) -> None:
    """v2 io.stat summed over devices: rbytes, wbytes, rios, wios."""
    sums = {b"rbytes": 0, b"wbytes": 0, b"rios": 0, b"wios": 0}
    for line in data.split(b"\n"):
        for field in line.split()[1:]:
            key, _, value = field.partition(b"=")
            if key in sums:
                sums[key] += int(value)
    values["io_read_bytes"], values["io_write_bytes"] = sums[b"rbytes"], sums[b"wbytes"]
    values["io_read_ops"], values["io_write_ops"] = sums[b"rios"], sums[b"wios"]


# How each logical file of counter_files() is parsed, straight from the bytes pread returns.
PARSERS: dict[str, Parser] = {
    "cpuacct.usage": _single("cpu_ns"),
    "cpuacct.usage_user": _single("cpu_user_ns"),
    "cpuacct.usage_sys": _single("cpu_system_ns"),
    "v1 cpu.stat": _keyed((b"throttled_time ", "cpu_throttled_ns", 1)),
    "memory.usage_in_bytes": _single("memory_current_bytes"),
    "memory.max_usage_in_bytes": _single("memory_peak_bytes"),
    "memory.oom_control": _keyed((b"oom_kill ", "oom_kills", 1)),
    "blkio bytes": _blkio("io_read_bytes", "io_write_bytes"),
    "blkio ops": _blkio("io_read_ops", "io_write_ops"),
    "pids.current": _single("pids"),
    "cpu.stat": _keyed(
        (b"usage_usec ", "cpu_ns", 1000),
        (b"user_usec ", "cpu_user_ns", 1000),
        (b"system_usec ", "cpu_system_ns", 1000),
        (b"throttled_usec ", "cpu_throttled_ns", 1000),
    ),
    "memory.current": _single("memory_current_bytes"),
    "memory.peak": _single("memory_peak_bytes"),
    "memory.events": _keyed((b"oom_kill ", "oom_kills", 1)),
    "io.stat": _io_stat,
    "cpu.pressure": _pressure("cpu_pressure_some_us", None),
    "memory.pressure": _pressure("memory_pressure_some_us", "memory_pressure_full_us"),
    "io.pressure": _pressure("io_pressure_some_us", "io_pressure_full_us"),
}
# What the final read at exit needs: the billed counters and the OOM verdict. Fewer files
# opened once, for attempts that ended before any sweep opened theirs.
FINAL_FILES = frozenset(
    {
        "cpuacct.usage",
        "memory.usage_in_bytes",
        "memory.max_usage_in_bytes",
        "memory.oom_control",
        "blkio bytes",
        "cpu.stat",
        "memory.current",
        "memory.peak",
        "memory.events",
        "io.stat",
    }
)


# Of FINAL_FILES and the v1 user/system split, the monitor compares these until they settle
# (billed counters, and cpu); the rest it reads once after them (see FinalRead).
_SETTLED = frozenset(
    {
        "cpuacct.usage",
        "cpuacct.usage_user",
        "cpuacct.usage_sys",
        "memory.max_usage_in_bytes",
        "blkio bytes",
        "cpu.stat",
        "memory.peak",
        "io.stat",
    }
)
_MONITOR_FILES = FINAL_FILES | {"cpuacct.usage_user", "cpuacct.usage_sys"}


# Per driver: (name, directory of the root cgroup, file) for the counters and the gauges.
_Files = tuple[tuple[str, str, str], ...]
_templates: weakref.WeakKeyDictionary[CgroupDriver, tuple[_Files, _Files]] = (
    weakref.WeakKeyDictionary()
)


def _final_templates(driver: CgroupDriver) -> tuple[_Files, _Files]:
    """FinalRead's files for the root cgroup, once per driver: a launch joins strings with
    the job's relative path instead of building paths."""
    files = _all_counter_files(driver, CgroupPath(()), _MONITOR_FILES)
    rows = [(n, str(p.parent), p.name) for n, p in files.items()]
    found = (
        tuple(r for r in rows if r[0] in _SETTLED),
        tuple(r for r in rows if r[0] not in _SETTLED),
    )
    _templates[driver] = found
    return found


def final_read(driver: CgroupDriver, path: CgroupPath) -> FinalRead:
    """What the monitor of a job in ``path`` reads once the job has ended (see FinalRead);
    the texts it records parse with :func:`parse_sample`."""
    counters, gauges = _templates.get(driver) or _final_templates(driver)
    rel = path.rel_text
    return FinalRead(
        counters=tuple((n, f"{base}/{rel}/{file}") for n, base, file in counters),
        gauges=tuple((n, f"{base}/{rel}/{file}") for n, base, file in gauges),
        empty_check=driver.emptiness_file(path),
    )


def _sample(values: Values) -> Sample:
    # As read_usage: without memory.peak (v2 before 5.19) the current value is the best we have.
    if "memory_peak_bytes" not in values and "memory_current_bytes" in values:
        values["memory_peak_bytes"] = values["memory_current_bytes"]
    return Sample(**values)  # type: ignore[arg-type]


def parse_sample(texts: Mapping[str, str]) -> Sample:
    """A :class:`Sample` from the text of each logical counter file (missing ones count 0);
    ValueError (or KeyError for an unknown name) on text that is not a counter file's."""
    values: Values = {}
    for name, text in texts.items():
        PARSERS[name](text.encode(), values)
    return _sample(values)


# The memory high-water mark of a cgroup, which the sampler resets at every period boundary
# so that the next read tells the peak of that period alone (see accounting/periods.py).
# v1: a write to memory.max_usage_in_bytes resets the cgroup's mark to its current usage
# (for every reader). v2: since Linux 6.12 a write to an open memory.peak resets the mark
# seen through that open file only; before 6.12 the file cannot be opened for writing.
PEAK_FILES = frozenset({"memory.max_usage_in_bytes", "memory.peak"})
# The kernel ignores what is written (any non-empty text resets).
_PEAK_RESET = b"0"


class CounterReader:
    """One cgroup's counter files, opened once and re-read with pread.

    Files that do not exist (a controller not mounted, a kernel without memory.peak or PSI)
    are left out for good. ``read`` raises ``OSError`` when the cgroup itself has gone.
    ``reset_peak``: the peak file is opened for writing too, so that :meth:`reset_peak` can
    restart its high-water mark (``resets_peak`` says whether the kernel allowed it).
    """

    def __init__(self, files: CounterFiles, *, reset_peak: bool = False) -> None:
        self._files: list[tuple[int, Parser]] = []
        self._peak_fd: int | None = None
        groups: dict[Path, list[tuple[str, Path]]] = {}
        for name, path in files.items():
            groups.setdefault(path.parent, []).append((name, path))
        try:
            for directory, members in groups.items():
                # Several files of one directory: open it once and openat() each file, which
                # skips walking the whole path again; a lone file is opened by its path.
                dir_fd = None
                if len(members) > 1:
                    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    for name, path in members:
                        try:
                            where = path.name if dir_fd is not None else path
                            if reset_peak and name in PEAK_FILES:
                                fd = self._open_peak(where, dir_fd)
                            else:
                                fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
                        except FileNotFoundError:
                            if dir_fd is None and not directory.is_dir():
                                raise  # the cgroup is not there (yet, or any more)
                            continue  # this kernel or mount has no such file
                        self._files.append((fd, PARSERS[name]))
                finally:
                    if dir_fd is not None:
                        os.close(dir_fd)
        except BaseException:
            self.close()
            raise

    def _open_peak(self, where: str | Path, dir_fd: int | None) -> int:
        """The peak file, read-write when the kernel lets its mark be reset (else read-only:
        cgroup v2 before 6.12 has no write handler and refuses the open with EACCES)."""
        try:
            fd = os.open(where, os.O_RDWR | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise
        except OSError:
            return os.open(where, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        self._peak_fd = fd
        return fd

    @property
    def resets_peak(self) -> bool:
        """True when :meth:`reset_peak` restarts the cgroup's memory high-water mark."""
        return self._peak_fd is not None

    def reset_peak(self) -> None:
        """Restart the memory high-water mark at the current usage (no-op if unsupported).

        A kernel that refuses the write (EINVAL, EACCES) is not asked again."""
        fd = self._peak_fd
        if fd is None:
            return
        try:
            os.pwrite(fd, _PEAK_RESET, 0)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                raise  # the cgroup is gone: as a read would say
            self._peak_fd = None

    def read(self) -> Sample:
        """Re-read every kept-open file and parse the values."""
        pread = os.pread
        values: Values = {}
        for fd, parse in self._files:
            parse(pread(fd, _READ_SIZE, 0), values)
        return _sample(values)

    def close(self) -> None:
        """Close every file; reading afterwards is an error."""
        files, self._files = self._files, []
        for fd, _ in files:
            os.close(fd)

    @property
    def open_files(self) -> int:
        return len(self._files)


def read_final(driver: CgroupDriver, path: CgroupPath, reader: CounterReader | None) -> Sample:
    """The counters of an emptied cgroup at exit: through the sampler's kept-open files when
    it has them, else from the few files billing needs, opened once."""
    if reader is not None:
        return reader.read()
    once = CounterReader(counter_files(driver, path, final=True))
    try:
        return once.read()
    finally:
        once.close()
