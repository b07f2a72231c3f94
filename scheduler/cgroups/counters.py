"""Kept-open counter files of one cgroup, re-read with pread on every sweep.

Opening a cgroupfs file costs several times more than re-reading it (an open walks kernfs
and allocates a seq_file; a pread of an open one only regenerates the text), so the sampler
opens a cgroup's counter files once and re-reads them with ``os.pread`` at offset 0 on every
sweep. The values read here are the same files the drivers' ``read_usage`` reads, so that a
sampled cumulative value and the final one at exit are the same counter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.cgroups.base import CgroupDriver, CgroupPath
from scheduler.cgroups.parse import parse_blkio_service_bytes, parse_flat_keyed
from scheduler.cgroups.v1 import V1Driver
from scheduler.cgroups.v2 import V2Driver

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


# Logical counter -> file, per driver. Each entry is parsed by the function named beside it.
CounterFiles = dict[str, Path]


def counter_files(driver: CgroupDriver, path: CgroupPath) -> CounterFiles:
    """The files that hold ``path``'s counters under ``driver`` (absent controllers left out)."""
    files: CounterFiles = {}
    if isinstance(driver, V1Driver):
        mounted = driver.controllers
        if "cpuacct" in mounted:
            acct = driver.directory("cpuacct", path)
            files["cpuacct.usage"] = acct / "cpuacct.usage"
            files["cpuacct.usage_user"] = acct / "cpuacct.usage_user"
            files["cpuacct.usage_sys"] = acct / "cpuacct.usage_sys"
        if "cpu" in mounted:
            files["v1 cpu.stat"] = driver.directory("cpu", path) / "cpu.stat"
        if "memory" in mounted:
            memory = driver.directory("memory", path)
            files["memory.usage_in_bytes"] = memory / "memory.usage_in_bytes"
            files["memory.max_usage_in_bytes"] = memory / "memory.max_usage_in_bytes"
            files["memory.oom_control"] = memory / "memory.oom_control"
        if "blkio" in mounted:
            blkio = driver.directory("blkio", path)
            files["blkio bytes"] = blkio / "blkio.throttle.io_service_bytes_recursive"
            files["blkio ops"] = blkio / "blkio.throttle.io_serviced_recursive"
        if "pids" in mounted:
            files["pids.current"] = driver.directory("pids", path) / "pids.current"
        if driver.has_unified:
            unified = driver.directory("unified", path)
            for resource in ("cpu", "memory", "io"):
                files[f"{resource}.pressure"] = unified / f"{resource}.pressure"
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
            files[name] = d / name
        return files
    raise TypeError(f"no counter files known for driver {driver!r}")


def _pressure_totals(text: str) -> tuple[int | None, int | None]:
    """(some total, full total) in microseconds from a PSI file."""
    some = full = None
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            if field.startswith("total="):
                value = int(field[6:])
                if kind == "some":
                    some = value
                elif kind == "full":
                    full = value
    return some, full


def _io_stat(text: str) -> tuple[int, int, int, int]:
    """v2 io.stat summed over devices: (rbytes, wbytes, rios, wios)."""
    rb = wb = ri = wi = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                rb += int(value)
            elif key == "wbytes":
                wb += int(value)
            elif key == "rios":
                ri += int(value)
            elif key == "wios":
                wi += int(value)
    return rb, wb, ri, wi


def parse_sample(texts: dict[str, str]) -> Sample:
    """A :class:`Sample` from the text of each logical counter file (missing ones count 0)."""
    values: dict[str, int | None] = {}
    if "cpuacct.usage" in texts:  # v1
        values["cpu_ns"] = int(texts["cpuacct.usage"])
        if "cpuacct.usage_user" in texts and "cpuacct.usage_sys" in texts:
            values["cpu_user_ns"] = int(texts["cpuacct.usage_user"])
            values["cpu_system_ns"] = int(texts["cpuacct.usage_sys"])
    if "v1 cpu.stat" in texts:
        values["cpu_throttled_ns"] = parse_flat_keyed(texts["v1 cpu.stat"]).get("throttled_time", 0)
    if "memory.usage_in_bytes" in texts:
        values["memory_current_bytes"] = int(texts["memory.usage_in_bytes"])
    if "memory.max_usage_in_bytes" in texts:
        values["memory_peak_bytes"] = int(texts["memory.max_usage_in_bytes"])
    if "memory.oom_control" in texts:
        values["oom_kills"] = parse_flat_keyed(texts["memory.oom_control"]).get("oom_kill", 0)
    if "blkio bytes" in texts:
        io = parse_blkio_service_bytes(texts["blkio bytes"])
        values["io_read_bytes"], values["io_write_bytes"] = io.read, io.write
    if "blkio ops" in texts:
        ops = parse_blkio_service_bytes(texts["blkio ops"])  # same "8:0 Read N" layout
        values["io_read_ops"], values["io_write_ops"] = ops.read, ops.write
    if "cpu.stat" in texts:  # v2: microseconds
        cpu = parse_flat_keyed(texts["cpu.stat"])
        values["cpu_ns"] = cpu.get("usage_usec", 0) * 1000
        values["cpu_user_ns"] = cpu.get("user_usec", 0) * 1000
        values["cpu_system_ns"] = cpu.get("system_usec", 0) * 1000
        values["cpu_throttled_ns"] = cpu.get("throttled_usec", 0) * 1000
    if "memory.current" in texts:
        values["memory_current_bytes"] = int(texts["memory.current"])
        # As read_usage: without memory.peak (before 5.19) current is the best we have.
        peak = texts.get("memory.peak")
        values["memory_peak_bytes"] = int(peak) if peak else int(texts["memory.current"])
    if "memory.events" in texts:
        values["oom_kills"] = parse_flat_keyed(texts["memory.events"]).get("oom_kill", 0)
    if "io.stat" in texts:
        rb, wb, ri, wi = _io_stat(texts["io.stat"])
        values.update(io_read_bytes=rb, io_write_bytes=wb, io_read_ops=ri, io_write_ops=wi)
    if "pids.current" in texts:
        values["pids"] = int(texts["pids.current"])
    if "cpu.pressure" in texts:
        values["cpu_pressure_some_us"] = _pressure_totals(texts["cpu.pressure"])[0]
    if "memory.pressure" in texts:
        some, full = _pressure_totals(texts["memory.pressure"])
        values["memory_pressure_some_us"], values["memory_pressure_full_us"] = some, full
    if "io.pressure" in texts:
        some, full = _pressure_totals(texts["io.pressure"])
        values["io_pressure_some_us"], values["io_pressure_full_us"] = some, full
    return Sample(**values)  # type: ignore[arg-type]


class CounterReader:
    """One cgroup's counter files, opened once and re-read with pread.

    Files that do not exist (a controller not mounted, a kernel without memory.peak or PSI)
    are left out for good. ``read`` raises ``OSError`` when the cgroup itself has gone.
    """

    def __init__(self, files: CounterFiles) -> None:
        self._fds: dict[str, int] = {}
        try:
            for name, path in files.items():
                try:
                    self._fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if not path.parent.is_dir():
                        raise  # the cgroup is not there (yet): nothing to read
        except BaseException:
            self.close()
            raise

    def read(self) -> Sample:
        """Re-read every kept-open file and parse the values."""
        pread = os.pread
        texts = {name: pread(fd, _READ_SIZE, 0).decode() for name, fd in self._fds.items()}
        return parse_sample(texts)

    def close(self) -> None:
        """Close every file; reading afterwards is an error."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    @property
    def open_files(self) -> int:
        return len(self._fds)
