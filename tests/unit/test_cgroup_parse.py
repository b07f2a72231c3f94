"""The cgroup parsers against kernel text.

tests/fixtures/cgroupv1/ was captured on the hybrid development host (kernel 6.18, v1
controllers plus a controller-less cgroup2 mount), laid out like cgroupfs: one directory per
hierarchy, one sub-directory per cgroup. The blkio numbers come from direct I/O to two loop
devices with blk-throttle activated; ``blkio/idle`` is what the same file says before that.
tests/fixtures/cgroupv2/ is a pure-v2 tree (Debian 12 style mountinfo, a job cgroup at
scheduler/acme/job-42 with controllers enabled).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.cgroups.parse import (
    IoBytes,
    Layout,
    PressureLine,
    parse_blkio_service_bytes,
    parse_controllers,
    parse_cpu_max,
    parse_flat_keyed,
    parse_freezer_state,
    parse_io_stat,
    parse_limit,
    parse_mountinfo,
    parse_pids,
    parse_pressure,
)
from scheduler.errors import CgroupError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V1 = FIXTURES / "cgroupv1"
V2 = FIXTURES / "cgroupv2"
JOB = V2 / "scheduler" / "acme" / "job-42"


def text(path: Path) -> str:
    return path.read_text()


# -- mountinfo -------------------------------------------------------------------------------


def test_mountinfo_of_this_hybrid_host() -> None:
    layout = parse_mountinfo(text(V1 / "mountinfo"))
    assert layout.mode == "hybrid"
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.v1 == {
        "cpu": "/sys/fs/cgroup/cpu",
        "cpuacct": "/sys/fs/cgroup/cpuacct",
        "cpuset": "/sys/fs/cgroup/cpuset",
        "memory": "/sys/fs/cgroup/memory",
        "devices": "/sys/fs/cgroup/devices",
        "freezer": "/sys/fs/cgroup/freezer",
        "blkio": "/sys/fs/cgroup/blkio",
        "pids": "/sys/fs/cgroup/pids",
    }


def test_mountinfo_with_co_mounted_controllers() -> None:
    layout = parse_mountinfo(text(V1 / "mountinfo-comounted"))
    assert layout.mode == "hybrid"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["net_cls"] == layout.v1["net_prio"] == "/sys/fs/cgroup/net_cls,net_prio"
    # name=systemd is a named hierarchy without controllers, xattr is an option.
    assert "systemd" not in layout.v1
    assert "xattr" not in layout.v1
    assert "name=systemd" not in layout.v1


def test_mountinfo_pure_v1_without_unified_mount() -> None:
    lines = [
        line for line in text(V1 / "mountinfo-comounted").splitlines() if "cgroup2" not in line
    ]
    layout = parse_mountinfo("\n".join(lines))
    assert layout.mode == "v1"
    assert layout.unified is None
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"


def test_mountinfo_pure_v2() -> None:
    assert parse_mountinfo(text(V2 / "mountinfo")) == Layout(
        v1={}, unified="/sys/fs/cgroup", mode="v2"
    )


def test_mountinfo_unescapes_paths_and_skips_optional_fields() -> None:
    line = (
        "40 31 0:37 / /srv/my\\040cgroups/mem rw,relatime shared:9 master:2 - cgroup cgroup "
        "rw,memory\n"
    )
    layout = parse_mountinfo(line)
    assert layout.v1 == {"memory": "/srv/my cgroups/mem"}
    assert layout.mode == "v1"


def test_mountinfo_first_mount_of_a_hierarchy_wins() -> None:
    first = "30 21 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    bind = "90 21 0:26 / /mnt/cg rw - cgroup2 cgroup2 rw\n"
    assert parse_mountinfo(first + bind).unified == "/sys/fs/cgroup"


def test_mountinfo_without_cgroups_is_an_error() -> None:
    no_cgroups = [line for line in text(V2 / "mountinfo").splitlines() if "cgroup" not in line]
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        parse_mountinfo("\n".join(no_cgroups))


# -- flat keyed files ------------------------------------------------------------------------


def test_v1_cpu_stat_captured() -> None:
    stat = parse_flat_keyed(text(V1 / "cpu" / "job" / "cpu.stat"))
    assert stat == {
        "nr_periods": 12,
        "nr_throttled": 9,
        "throttled_time": 420401250,
        "nr_bursts": 0,
        "burst_time": 0,
    }


def test_cpuacct_stat_captured_is_in_user_hz_ticks() -> None:
    assert parse_flat_keyed(text(V1 / "cpuacct" / "job" / "cpuacct.stat")) == {
        "user": 33,
        "system": 17,
    }


def test_memory_oom_control_captured_after_an_oom_kill() -> None:
    assert parse_flat_keyed(text(V1 / "memory" / "job" / "memory.oom_control")) == {
        "oom_kill_disable": 0,
        "under_oom": 0,
        "oom_kill": 1,
    }


def test_memory_stat_v1_captured() -> None:
    stat = parse_flat_keyed(text(V1 / "memory" / "job" / "memory.stat"))
    assert stat["hierarchical_memory_limit"] == 33554432
    assert stat["total_pgfault"] == 16704


def test_unified_cpu_stat_and_events_captured_on_hybrid() -> None:
    # Without the cpu controller cgroup2's cpu.stat has only the core usage fields.
    assert parse_flat_keyed(text(V1 / "unified" / "job" / "cpu.stat")) == {
        "usage_usec": 511032,
        "user_usec": 332761,
        "system_usec": 178270,
        "nice_usec": 0,
    }
    events = V1 / "unified"
    assert parse_flat_keyed(text(events / "job" / "cgroup.events")) == {
        "populated": 0,
        "frozen": 0,
    }
    assert parse_flat_keyed(text(events / "running" / "cgroup.events"))["populated"] == 1
    assert parse_flat_keyed(text(events / "frozen" / "cgroup.events")) == {
        "populated": 1,
        "frozen": 1,
    }


def test_v2_cpu_stat_with_throttling_fields() -> None:
    stat = parse_flat_keyed(text(JOB / "cpu.stat"))
    assert stat["usage_usec"] == 4395818
    assert stat["user_usec"] + stat["system_usec"] == stat["usage_usec"]
    assert stat["nr_periods"] == 412
    assert stat["nr_throttled"] == 87
    assert stat["throttled_usec"] == 2204413
    # Dotted keys from CONFIG_SCHED_CORE are kept like any other.
    assert stat["core_sched.force_idle_usec"] == 0


def test_v2_memory_events_and_stat() -> None:
    events = parse_flat_keyed(text(JOB / "memory.events"))
    assert events == {
        "low": 0,
        "high": 0,
        "max": 1843,
        "oom": 2,
        "oom_kill": 2,
        "oom_group_kill": 0,
    }
    stat = parse_flat_keyed(text(JOB / "memory.stat"))
    assert stat["anon"] == 174882816
    assert stat["pgmajfault"] == 12
    assert len(stat) == 56


def test_flat_keyed_skips_lines_that_are_not_integers() -> None:
    assert parse_flat_keyed("a 1\nweird line here\nb x\n\nc 3") == {"a": 1, "c": 3}


def test_pids_events_captured() -> None:
    assert parse_flat_keyed(text(V1 / "pids" / "job" / "pids.events")) == {"max": 0}


# -- io --------------------------------------------------------------------------------------


def test_v2_io_stat_sums_devices() -> None:
    assert parse_io_stat(text(JOB / "io.stat")) == IoBytes(
        read=1040384 + 90267648, write=0 + 314572800
    )


def test_v2_io_stat_empty_when_no_io_happened() -> None:
    assert parse_io_stat("") == IoBytes(0, 0)


def test_v1_blkio_service_bytes_sums_read_write_and_ignores_totals() -> None:
    job = V1 / "blkio" / "job"
    assert parse_blkio_service_bytes(text(job / "blkio.throttle.io_service_bytes")) == IoBytes(
        read=0 + 2621440, write=1048576 + 8388608
    )
    # _recursive includes the 40960 bytes read by the child cgroup.
    recursive = parse_blkio_service_bytes(text(job / "blkio.throttle.io_service_bytes_recursive"))
    assert recursive == IoBytes(read=2662400, write=9437184)
    child = parse_blkio_service_bytes(
        text(job / "child" / "blkio.throttle.io_service_bytes_recursive")
    )
    assert child == IoBytes(read=40960, write=0)
    assert recursive.read - child.read == 2621440


def test_v1_blkio_before_throttling_is_activated_reads_total_zero() -> None:
    idle = text(V1 / "blkio" / "idle" / "blkio.throttle.io_service_bytes_recursive")
    assert idle == "Total 0\n"
    assert parse_blkio_service_bytes(idle) == IoBytes(0, 0)


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("max\n", None),
        ("-1\n", None),
        ("9223372036854771712\n", None),  # v1 memory.limit_in_bytes when unlimited
        ("33554432\n", 33554432),
        ("0\n", 0),
    ],
)
def test_parse_limit(raw: str, expected: int | None) -> None:
    assert parse_limit(raw) == expected


def test_parse_limit_on_captured_files() -> None:
    assert parse_limit(text(V1 / "memory" / "job" / "memory.limit_in_bytes")) == 32 * 1024 * 1024
    assert parse_limit(text(V1 / "pids" / "job" / "pids.max")) is None
    assert parse_limit(text(V1 / "cpu" / "job" / "cpu.cfs_quota_us")) == 50000
    assert parse_limit(text(JOB / "memory.max")) == 268435456


def test_parse_cpu_max() -> None:
    assert parse_cpu_max(text(JOB / "cpu.max")) == (50000, 100000)
    assert parse_cpu_max("max 100000\n") == (None, 100000)


def test_parse_controllers() -> None:
    assert parse_controllers(text(V2 / "cgroup.controllers")) == {
        "cpuset",
        "cpu",
        "io",
        "memory",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
    assert parse_controllers("") == frozenset()
    assert parse_controllers("+cpu +memory") == {"cpu", "memory"}


def test_parse_pids() -> None:
    assert parse_pids(text(JOB / "cgroup.procs")) == [4711, 4712, 4730]
    assert parse_pids("") == []


def test_parse_freezer_state_captured() -> None:
    assert parse_freezer_state(text(V1 / "freezer" / "thawed" / "freezer.state")) == "THAWED"
    assert parse_freezer_state(text(V1 / "freezer" / "frozen" / "freezer.state")) == "FROZEN"
    assert parse_freezer_state("FREEZING\n") == "FREEZING"
    with pytest.raises(ValueError, match=r"unknown freezer\.state"):
        parse_freezer_state("SLUSHY\n")


# -- pressure --------------------------------------------------------------------------------


def test_parse_pressure_captured() -> None:
    pressure = parse_pressure(text(V1 / "unified" / "job" / "cpu.pressure"))
    assert pressure.some == PressureLine(avg10=0.0, avg60=0.02, avg300=0.04, total_us=278079)
    assert pressure.full == PressureLine(avg10=0.0, avg60=0.02, avg300=0.04, total_us=277240)
    memory = parse_pressure(text(JOB / "memory.pressure"))
    assert memory.some.avg10 == pytest.approx(1.24)
    assert memory.full is not None
    assert memory.full.total_us == 6630189


def test_parse_pressure_without_full_line() -> None:
    pressure = parse_pressure("some avg10=0.50 avg60=0.10 avg300=0.00 total=1234\n")
    assert pressure.full is None
    assert pressure.some.total_us == 1234
    with pytest.raises(ValueError, match="no 'some' line"):
        parse_pressure("")
