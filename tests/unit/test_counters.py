"""Kept-open counter files read against captured kernel text (v1 hybrid host, v2 tree)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from scheduler.cgroups import v1, v2
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Usage
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


def v1_fixture(tmp_path: Path) -> V1Driver:
    root = tmp_path / "cg"
    mounts = {}
    for controller in ("cpu", "cpuacct", "memory", "blkio", "pids", "unified"):
        (root / controller).mkdir(parents=True)
        shutil.copytree(FIXTURES / "cgroupv1" / controller / "job", root / controller / "r" / "job")
        if controller != "unified":
            mounts[controller] = root / controller
    return V1Driver(mounts, "r", unified=root / "unified")


def v2_fixture(tmp_path: Path) -> V2Driver:
    shutil.copytree(FIXTURES / "cgroupv2", tmp_path / "cgroup")
    return V2Driver(tmp_path / "cgroup", "scheduler")


def test_both_drivers_counter_files_answer_the_same_keys() -> None:
    """Each driver names its own files, but together they give every value of a Sample, and
    the final read at exit (billed and gauges) gives every billed value of a Usage."""
    fields = {f.name for f in dataclasses.fields(Sample)}
    billed = {"cpu_ns", "memory_current_bytes", "memory_peak_bytes", "oom_kills"}
    billed |= {"io_read_bytes", "io_write_bytes"}
    for counters in (v1.COUNTERS, v2.COUNTERS):
        assert {key for c in counters for key in c.parser.fields} == fields
        final = {key for c in counters if c.role in ("billed", "gauge") for key in c.parser.fields}
        assert billed <= final


@pytest.mark.parametrize("make", [v1_fixture, v2_fixture], ids=["v1", "v2"])
def test_the_drivers_read_usage_is_the_samplers_reader(tmp_path: Path, make: object) -> None:
    """One reader: the driver's read_usage, the sampler's kept-open files and the parse of
    the monitor's recorded texts give the same numbers from the same files."""
    assert callable(make)
    driver: CgroupDriver = make(tmp_path)
    job = CgroupPath(("job",)) if isinstance(driver, V1Driver) else CgroupPath(("acme", "job-42"))
    reader = CounterReader(counter_files(driver, job))
    try:
        sample = reader.read()
    finally:
        reader.close()
    usage = driver.read_usage(job)
    assert usage == sample.usage()
    assert usage != Usage() and usage.cpu_ns > 0 and usage.oom_kills > 0
    texts = {c.name: p.read_text() for c, p in driver.counter_files(job) if p.exists()}
    assert parse_sample(driver, texts) == sample
    files = counter_files(driver, job, final=True)
    final = {name: path.read_text() for name, (path, _) in files.items() if path.exists()}
    recorded = parse_sample(driver, final)
    for billed in ("cpu_ns", "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "oom_kills"):
        assert getattr(recorded, billed) == getattr(sample, billed), billed


def test_a_missing_cgroup_is_an_os_error_and_leaks_nothing(tmp_path: Path) -> None:
    driver = V2Driver(tmp_path, "scheduler")
    with pytest.raises(FileNotFoundError):
        CounterReader(counter_files(driver, CgroupPath(("acme", "job-1"))))


def test_parse_sample_with_nothing_counts_zero(tmp_path: Path) -> None:
    driver = V2Driver(tmp_path, "scheduler")
    assert parse_sample(driver, {}) == Sample()
    assert parse_sample(driver, {"memory.current": "5\n"}).memory_peak_bytes == 5


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
