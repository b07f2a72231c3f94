"""Kept-open counter files of one cgroup, re-read with pread on every sweep.

Opening a cgroupfs file costs several times more than re-reading it (an open walks kernfs
and allocates a seq_file; a pread of an open one only regenerates the text), so the sampler
opens a cgroup's counter files once and re-reads them with ``os.pread`` at offset 0 on every
sweep. Which files a cgroup has and how each is parsed is the driver's (its ``counter_files``,
the parsers of cgroups/parse.py), and its ``read_usage`` reads the same files through the same
parsers, so that a sampled cumulative value and the final one at exit are the same counter.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from scheduler.cgroups.base import CgroupDriver, CgroupPath, CounterRole, Usage
from scheduler.cgroups.parse import CounterParser, Values, peak_or_current
from scheduler.launchplan import FinalRead

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


# Logical counter -> (its file in the cgroup, how it is parsed), as the driver names them.
CounterFiles = dict[str, tuple[Path, CounterParser]]

# What the final read at exit needs: the billed counters and the OOM verdict. Fewer files
# opened once, for attempts that ended before any sweep opened theirs.
FINAL_ROLES: frozenset[CounterRole] = frozenset({"billed", "gauge"})
# The monitor's own final read adds the counters only it takes (v1's user/system split);
# it re-reads these until they settle and reads the gauges once after them (see FinalRead).
_MONITOR_ROLES: frozenset[CounterRole] = FINAL_ROLES | {"monitor"}
_SETTLED_ROLES: frozenset[CounterRole] = frozenset({"billed", "monitor"})


def counter_files(driver: CgroupDriver, path: CgroupPath, *, final: bool = False) -> CounterFiles:
    """The files that hold ``path``'s counters under ``driver`` (absent controllers left out);
    ``final``: only those the final read at exit needs (see FINAL_ROLES)."""
    return {
        counter.name: (file, counter.parser)
        for counter, file in driver.counter_files(path)
        if not final or counter.role in FINAL_ROLES
    }


# Per driver: (name, directory of the root cgroup, file) for the counters and the gauges.
_Files = tuple[tuple[str, str, str], ...]
_templates: weakref.WeakKeyDictionary[CgroupDriver, tuple[_Files, _Files]] = (
    weakref.WeakKeyDictionary()
)


def _final_templates(driver: CgroupDriver) -> tuple[_Files, _Files]:
    """FinalRead's files for the root cgroup, once per driver: a launch joins strings with
    the job's relative path instead of building paths."""
    rows = [
        (c, (c.name, str(p.parent), p.name))
        for c, p in driver.counter_files(CgroupPath(()))
        if c.role in _MONITOR_ROLES
    ]
    found = (
        tuple(r for c, r in rows if c.role in _SETTLED_ROLES),
        tuple(r for c, r in rows if c.role not in _SETTLED_ROLES),
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
    return Sample(**peak_or_current(values))  # type: ignore[arg-type]


def parse_sample(driver: CgroupDriver, texts: Mapping[str, str]) -> Sample:
    """A :class:`Sample` from the text of each of ``driver``'s counter files by logical name
    (missing ones count 0); ValueError (or KeyError for a name the driver does not know) on
    text that is not a counter file's."""
    values: Values = {}
    for name, text in texts.items():
        driver.counter_file(name).parser.parse(text.encode(), values)
    return _sample(values)


# The memory high-water mark of a cgroup, which the sampler resets at every period boundary
# so that the next read tells the peak of that period alone (see accounting/periods.py).
# v1: a write to memory.max_usage_in_bytes resets the cgroup's mark to its current usage
# (for every reader). v2: since Linux 6.12 a write to an open memory.peak resets the mark
# seen through that open file only; before 6.12 it has no write handler: the open for writing
# or the first write fails (seen in the Linux 6.1 VM: root's open succeeds, the write fails).
# The peak file is the one whose parser gives this field (each driver has one).
PEAK = "memory_peak_bytes"
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
        self._files: list[tuple[int, Callable[[bytes, Values], None]]] = []
        self._peak_fd: int | None = None
        groups: dict[Path, list[tuple[Path, CounterParser]]] = {}
        for path, parser in files.values():
            groups.setdefault(path.parent, []).append((path, parser))
        try:
            for directory, members in groups.items():
                # Several files of one directory: open it once and openat() each file, which
                # skips walking the whole path again; a lone file is opened by its path.
                dir_fd = None
                if len(members) > 1:
                    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    for path, parser in members:
                        try:
                            where = path.name if dir_fd is not None else path
                            if reset_peak and PEAK in parser.fields:
                                fd = self._open_peak(where, dir_fd)
                            else:
                                fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
                        except FileNotFoundError:
                            if dir_fd is None and not directory.is_dir():
                                raise  # the cgroup is not there (yet, or any more)
                            continue  # this kernel or mount has no such file
                        self._files.append((fd, parser.parse))
                finally:
                    if dir_fd is not None:
                        os.close(dir_fd)
        except BaseException:
            self.close()
            raise

    def _open_peak(self, where: str | Path, dir_fd: int | None) -> int:
        """The peak file, read-write when the kernel lets its mark be reset (else read-only:
        cgroup v2 before 6.12 has no write handler: the open for writing fails, or else the
        first reset_peak() does, and the reader stops asking)."""
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
