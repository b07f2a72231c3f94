"""io limits and io weight on cgroup v2 (a fake cgroupfs: this host's cgroup2 has no
controllers), and the choice of block devices."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.cgroups.base import CgroupPath, Limits
from scheduler.cgroups.devices import disk_of, io_devices, parse_devices
from scheduler.cgroups.parse import parse_mountinfo
from scheduler.errors import CgroupError, ConfigError
from tests.unit.test_cgroup_v2_fake import V2_FIXTURE, FakeCgroupfs, Tree, install, run_plan

MB = 1_000_000


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    """The fake cgroup2 host of test_cgroup_v2_fake."""
    mount = tmp_path / "sys" / "fs" / "cgroup"
    shutil.copytree(V2_FIXTURE, mount, ignore=shutil.ignore_patterns("mountinfo"))
    kernel = FakeCgroupfs()
    install(monkeypatch, kernel)
    yield Tree(tmp_path, mount, parse_mountinfo((V2_FIXTURE / "mountinfo").read_text()), kernel)


TENANT = CgroupPath(("acme",))
JOB = CgroupPath(("acme", "job-7"))


def test_tenant_io_limits_and_weight_are_written(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    tenant = tree.mount / "sched" / "acme"
    (tenant / "io.weight").write_text("default 100\n")
    limits = Limits(io_read_bps=50 * MB, io_write_bps=20 * MB, weight=300, io_devices=("8:0",))
    driver.ensure(TENANT, limits)
    assert (tenant / "io.max").read_text() == f"8:0 rbps={50 * MB} wbps={20 * MB}"
    assert (tenant / "io.weight").read_text() == "default 300"
    assert (tenant / "cpu.weight").read_text() == "300"
    # Dropping the limits writes "max" back.
    driver.ensure(TENANT, Limits(io_devices=("8:0",)))
    assert (tenant / "io.max").read_text() == "8:0 rbps=max wbps=max"
    assert (tenant / "io.weight").read_text() == "default 100"


def test_io_weight_falls_back_to_bfq_and_is_skipped_without_either(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    tenant = tree.mount / "sched" / "acme"
    driver.ensure(TENANT, Limits(weight=5000))  # neither file: skipped, no error
    (tenant / "io.bfq.weight").write_text("default 100\n")
    driver.ensure(TENANT, Limits(weight=5000))
    assert (tenant / "io.bfq.weight").read_text() == "default 1000"  # BFQ's range ends at 1000


def test_job_io_limits_are_in_its_launch_plan(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    leaf = tree.mount / "sched" / "acme" / "job-7"
    plan = driver.plan(JOB, Limits(io_write_bps=MB, io_devices=("254:0", "8:16")))
    assert plan.writes == (
        (f"{leaf}/io.max", f"254:0 rbps=max wbps={MB}"),
        (f"{leaf}/io.max", f"8:16 rbps=max wbps={MB}"),
    )
    run_plan(plan)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(io_read_bps=0, io_devices=("8:0",)), "io_read_bps must be > 0"),
        (Limits(io_write_bps=-1, io_devices=("8:0",)), "io_write_bps must be > 0"),
        (Limits(io_read_bps=1, io_devices=("sda",)), "is not MAJ:MIN"),
    ],
)
def test_bad_io_limits_are_refused(tree: Tree, limits: Limits, message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        tree.driver().ensure(TENANT, limits)


def test_devices_are_parsed_or_found_from_the_state_dir(tmp_path: Path) -> None:
    assert parse_devices(" 254:0, 8:16 ") == ("254:0", "8:16")
    with pytest.raises(ConfigError, match="not MAJ:MIN"):
        parse_devices("sda")
    assert io_devices("8:0", tmp_path) == ("8:0",)


def test_disk_of_a_partition_is_its_whole_disk(tmp_path: Path) -> None:
    st_dev = Path("/").stat().st_dev
    major, minor = os.major(st_dev), os.minor(st_dev)
    sys_root = tmp_path / "sys"
    disk = sys_root / "devices" / "sda"
    part = disk / "sda1"
    part.mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    (part / "partition").write_text("1\n")
    (sys_root / "dev" / "block").mkdir(parents=True)
    (sys_root / "dev" / "block" / f"{major}:{minor}").symlink_to(part)
    assert disk_of(Path("/"), sys_root) == "8:0"
    assert disk_of(Path("/"), tmp_path / "empty") is None
