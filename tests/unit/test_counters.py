"""Kept-open counter files read against captured kernel text (v1 hybrid host, v2 tree)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.counters import CounterReader, Sample, counter_files, parse_sample
from scheduler.cgroups.v1 import V1Driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.runtime.output import OutputEnd, OutputMeter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_v2_job_counters_from_the_captured_tree(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    shutil.copytree(FIXTURES / "cgroupv2", mount)
    driver = V2Driver(mount, "scheduler")
    job = CgroupPath(("acme", "job-42"))
    reader = CounterReader(counter_files(driver, job))
    try:
        sample = reader.read()
        assert sample == Sample(
            cpu_ns=4395818_000,
            cpu_user_ns=3871094_000,
            cpu_system_ns=524724_000,
            cpu_throttled_ns=2204413_000,
            memory_current_bytes=187035648,
            memory_peak_bytes=268402688,
            oom_kills=2,
            io_read_bytes=1040384 + 90267648,
            io_write_bytes=314572800,
            io_read_ops=58 + 2171,
            io_write_ops=1233,
            pids=3,
            cpu_pressure_some_us=20374561,
            memory_pressure_some_us=8124411,
            memory_pressure_full_us=6630189,
            io_pressure_some_us=301877,
            io_pressure_full_us=287302,
        )
        # The billed counters are the ones the driver's final read returns.
        usage = driver.read_usage(job)
        assert (sample.cpu_ns, sample.memory_peak_bytes, sample.io_read_bytes) == (
            usage.cpu_ns,
            usage.memory_peak_bytes,
            usage.io_read_bytes,
        )
        # Re-read with pread sees a rewritten file (cgroupfs regenerates it on every read).
        cpu_stat = mount / "scheduler" / "acme" / "job-42" / "cpu.stat"
        cpu_stat.write_text("usage_usec 5000000\nuser_usec 1\nsystem_usec 2\n")
        assert reader.read().cpu_ns == 5_000_000_000
    finally:
        reader.close()
    assert reader.open_files == 0


def test_v1_hybrid_counters_from_the_captured_host(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    mounts = {}
    for controller in ("cpu", "cpuacct", "memory", "blkio", "pids", "unified"):
        (root / controller).mkdir(parents=True)
        shutil.copytree(FIXTURES / "cgroupv1" / controller / "job", root / controller / "r" / "job")
        if controller != "unified":
            mounts[controller] = root / controller
    driver = V1Driver(mounts, "r", unified=root / "unified")
    job = CgroupPath(("job",))
    reader = CounterReader(counter_files(driver, job))
    try:
        sample = reader.read()
    finally:
        reader.close()
    usage = driver.read_usage(job)
    assert sample.cpu_ns == usage.cpu_ns == 511032175
    assert (sample.cpu_user_ns, sample.cpu_system_ns) == (335988864, 180000000)
    assert sample.cpu_throttled_ns == 420401250
    assert sample.memory_current_bytes == 241664
    assert sample.memory_peak_bytes == usage.memory_peak_bytes == 33554432
    assert sample.oom_kills == 1
    assert (sample.io_read_bytes, sample.io_write_bytes) == (2662400, 8388608 + 1048576)
    assert (sample.io_read_ops, sample.io_write_ops) == (0, 0)  # not captured: counts 0
    assert sample.pids == 1
    assert sample.cpu_pressure_some_us == 278079
    assert (sample.io_pressure_some_us, sample.io_pressure_full_us) == (11781, 11776)
    assert (sample.memory_pressure_some_us, sample.memory_pressure_full_us) == (2101, 2101)


def test_a_missing_cgroup_is_an_os_error_and_leaks_nothing(tmp_path: Path) -> None:
    driver = V2Driver(tmp_path, "scheduler")
    with pytest.raises(FileNotFoundError):
        CounterReader(counter_files(driver, CgroupPath(("acme", "job-1"))))


def test_parse_sample_with_nothing_counts_zero() -> None:
    assert parse_sample({}) == Sample()
    assert parse_sample({"memory.current": "5\n"}).memory_peak_bytes == 5


def test_output_meter_counts_kept_bytes_not_markers(tmp_path: Path) -> None:
    """The kept output of an attempt: sampled sizes capped at the limit, and at the end the
    sizes less the monitor's marker lines, with the reason they give."""
    meter = OutputMeter(tmp_path / "out", limit=10)
    assert meter.kept() == 0  # no directory yet: nothing written
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stdout").write_bytes(b"0123456")
    assert meter.kept() == 7
    marker = b"\n[scheduler: output dropped from here: output limit of 10 bytes reached]\n"
    (tmp_path / "out" / "stderr").write_bytes(b"abc" + marker)
    assert meter.kept() == 10  # stderr made since the last look; the marker never counts
    assert meter.end() == OutputEnd(10, "output limit of 10 bytes reached")
    meter.close()
    assert OutputMeter(tmp_path / "none", None).end() == OutputEnd(0, None)
