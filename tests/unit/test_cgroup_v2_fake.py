"""The v2 driver (and detect.open_driver's choice) against a fake cgroupfs in tmp_path.

The fake mount starts as a copy of tests/fixtures/cgroupv2 (mount-root controllers and a
job cgroup at scheduler/acme/job-42 with captured-style counters). ``FakeCgroupfs`` stands
in for the two things a plain directory does differently from cgroupfs: mkdir fills a new
cgroup with its interface files (controllers = the parent's subtree_control), and rmdir
ignores those files but refuses a cgroup that still has children (EBUSY).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from scheduler.agent.service import check_v2_controllers
from scheduler.cgroups import fs
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupPath, LaunchPlan, Limits, Usage
from scheduler.cgroups.detect import open_driver, own_unified_cgroup
from scheduler.cgroups.parse import Layout, parse_controllers, parse_mountinfo
from scheduler.cgroups.v1 import V1Driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.errors import CgroupError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V2_FIXTURE = FIXTURES / "cgroupv2"
MIB = 1024 * 1024

PSI_ZERO = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n" + (
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)


class FakeCgroupfs:
    """mkdir/rmdir with cgroupfs semantics over a plain directory tree."""

    def __init__(self, *, swap: bool = True) -> None:
        self.swap = swap

    def make_dir(self, path: Path) -> bool:
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            return False
        self._populate(path)
        return True

    def remove_dir(self, path: Path, *, retry_seconds: float = 0.0) -> None:
        if not path.is_dir():
            return
        if any(child.is_dir() for child in path.iterdir()):
            cause = OSError(errno.EBUSY, "Device or resource busy")
            raise CgroupError(f"cannot remove {path}: Device or resource busy") from cause
        for file in path.iterdir():
            file.unlink()
        path.rmdir()

    def _populate(self, path: Path) -> None:
        enabled = parse_controllers((path.parent / "cgroup.subtree_control").read_text())
        files = {
            "cgroup.controllers": " ".join(sorted(enabled)) + "\n",
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.freeze": "0\n",
            "cgroup.kill": "",
            "cgroup.type": "domain\n",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnice_usec 0\n",
            "cpu.pressure": PSI_ZERO,
            "memory.pressure": PSI_ZERO,
            "io.pressure": PSI_ZERO,
        }
        if "cpu" in enabled:
            files["cpu.max"] = "max 100000\n"
            files["cpu.weight"] = "100\n"
        if "memory" in enabled:
            files["memory.max"] = "max\n"
            files["memory.current"] = "0\n"
            files["memory.peak"] = "0\n"
            files["memory.events"] = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
            if self.swap:
                files["memory.swap.max"] = "max\n"
                files["memory.swap.current"] = "0\n"
        if "pids" in enabled:
            files["pids.max"] = "max\n"
            files["pids.current"] = "0\n"
        if "io" in enabled:
            files["io.stat"] = ""
            files["io.max"] = ""
        for name, content in files.items():
            (path / name).write_text(content)


@dataclass
class Tree:
    """A fake host: ``fs_root`` for open_driver, ``mount`` is its cgroup2 mount."""

    fs_root: Path
    mount: Path
    layout: Layout
    kernel: FakeCgroupfs

    def driver(self, root: str = "sched") -> V2Driver:
        driver = open_driver(root, layout=self.layout, fs_root=self.fs_root)
        assert isinstance(driver, V2Driver)
        driver.freeze_timeout = 0.05
        driver.kill_timeout = 0.05
        return driver


def install(monkeypatch: pytest.MonkeyPatch, kernel: FakeCgroupfs) -> None:
    monkeypatch.setattr(fs, "make_dir", kernel.make_dir)
    monkeypatch.setattr(fs, "remove_dir", kernel.remove_dir)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    mount = tmp_path / "sys" / "fs" / "cgroup"
    shutil.copytree(V2_FIXTURE, mount, ignore=shutil.ignore_patterns("mountinfo"))
    kernel = FakeCgroupfs()
    install(monkeypatch, kernel)
    yield Tree(tmp_path, mount, parse_mountinfo((V2_FIXTURE / "mountinfo").read_text()), kernel)


def run_plan(plan: LaunchPlan) -> None:
    """What the C monitor does before exec, minus the pid."""
    for directory in plan.mkdirs:
        fs.make_dir(Path(directory))
    for file, value in plan.writes:
        fs.write_file(file, value)


TENANT = CgroupPath(("acme",))
JOB = CgroupPath(("acme", "job-7"))


# -- ensure ----------------------------------------------------------------------------------


def test_ensure_enables_controllers_top_down_and_writes_limits(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits(cpu_cores=2.0, memory_bytes=1024 * MIB, pids_max=100, weight=200))
    root = tree.mount / "sched"
    acme = root / "acme"
    # cpuset is offered by the mount root but not managed.
    assert driver.controllers() == {"cpuset", "cpu", "io", "memory", "pids"}
    for node in (root, acme):
        assert (node / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +io"
    assert parse_controllers((acme / "cgroup.controllers").read_text()) == {
        "cpu",
        "io",
        "memory",
        "pids",
    }
    assert (acme / "cpu.max").read_text() == "200000 100000"
    assert (acme / "cpu.weight").read_text() == "200"
    assert (acme / "memory.max").read_text() == str(1024 * MIB)
    assert (acme / "memory.swap.max").read_text() == "0"
    assert (acme / "pids.max").read_text() == "100"
    # The mount root itself is never written.
    assert (tree.mount / "cgroup.subtree_control").read_text() == "cpuset cpu io memory pids\n"


def test_ensure_again_without_limits_resets_them(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits(cpu_cores=1.0, memory_bytes=64 * MIB, pids_max=5, weight=50))
    driver.ensure(TENANT, Limits())
    acme = tree.mount / "sched" / "acme"
    assert (acme / "cpu.max").read_text() == "max 100000"
    assert (acme / "cpu.weight").read_text() == "100"
    assert (acme / "memory.max").read_text() == "max"
    assert (acme / "memory.swap.max").read_text() == "max"
    assert (acme / "pids.max").read_text() == "max"


def test_ensure_nested_tenants_creates_every_level(tree: Tree) -> None:
    # Above the root is systemd's business: with Delegate=yes it enables the controllers.
    tree.kernel.make_dir(tree.mount / "system.slice")
    (tree.mount / "system.slice" / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    driver = tree.driver("system.slice/scheduler.service")
    driver.ensure(CgroupPath(("acme", "team-a")), Limits(memory_bytes=MIB))
    base = tree.mount / "system.slice" / "scheduler.service"
    assert (tree.mount / "system.slice" / "cgroup.subtree_control").read_text() == (
        "cpu io memory pids\n"
    )
    for node in (base, base / "acme", base / "acme" / "team-a"):
        assert (node / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +io"
    assert (base / "acme" / "team-a" / "memory.max").read_text() == str(MIB)
    assert driver.children(CgroupPath(("acme",))) == ["team-a"]
    assert driver.exists(CgroupPath(("acme", "team-a")))
    assert not driver.exists(CgroupPath(("acme", "team-b")))


def test_ensure_without_swap_accounting_skips_swap_max(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, FakeCgroupfs(swap=False))
    tree.driver().ensure(TENANT, Limits(memory_bytes=MIB))
    acme = tree.mount / "sched" / "acme"
    assert (acme / "memory.max").read_text() == str(MIB)
    assert not (acme / "memory.swap.max").exists()


# -- plan ------------------------------------------------------------------------------------


def test_plan_creates_the_leaf_writes_limits_and_names_procs(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    leaf = tree.mount / "sched" / "acme" / "job-7"
    plan = driver.plan(JOB, Limits(cpu_cores=0.5, memory_bytes=256 * MIB, pids_max=64, weight=10))
    assert plan == LaunchPlan(
        mkdirs=(str(leaf),),
        writes=(
            (f"{leaf}/cpu.max", "50000 100000"),
            (f"{leaf}/cpu.weight", "10"),
            (f"{leaf}/memory.max", str(256 * MIB)),
            (f"{leaf}/memory.swap.max", "0"),
            (f"{leaf}/pids.max", "64"),
        ),
        procs=(f"{leaf}/cgroup.procs",),
        dirs=(str(leaf),),
    )
    run_plan(plan)
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "memory.swap.max").read_text() == "0"


def test_plan_without_limits_only_creates_the_leaf(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    plan = driver.plan(JOB, Limits())
    assert plan.writes == ()
    assert len(plan.mkdirs) == len(plan.procs) == len(plan.dirs) == 1


def test_plan_cpu_quota_has_a_floor_of_one_millisecond(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    plan = driver.plan(JOB, Limits(cpu_cores=0.001))
    assert plan.writes[0][1] == "1000 100000"


def test_plan_of_the_root_itself_is_refused(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(CgroupPath(()), Limits())
    with pytest.raises(CgroupError, match="below the root"):
        driver.plan(CgroupPath(()), Limits())


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(cpu_cores=0), "cpu_cores must be > 0"),
        (Limits(weight=0), "weight must be in 1..10000"),
        (Limits(weight=10_001), "weight must be in 1..10000"),
        (Limits(memory_bytes=0), "memory_bytes must be > 0"),
        (Limits(pids_max=-1), "pids_max must be >= 0"),
    ],
)
def test_invalid_limit_values_are_refused(tree: Tree, limits: Limits, message: str) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    with pytest.raises(CgroupError, match=message):
        driver.plan(JOB, limits)


# -- missing controllers ---------------------------------------------------------------------


def test_limit_for_a_controller_the_root_lacks_names_it(tree: Tree) -> None:
    (tree.mount / "cgroup.subtree_control").write_text("memory pids\n")
    driver = tree.driver()
    with pytest.raises(CgroupError, match=r"'cpu' is not available .*needed for cpu_cores"):
        driver.ensure(TENANT, Limits(cpu_cores=1.0))
    driver.ensure(TENANT, Limits(memory_bytes=MIB))
    assert (tree.mount / "sched" / "cgroup.subtree_control").read_text() == "+memory +pids"
    with pytest.raises(CgroupError, match=r"'cpu' is not available .*needed for weight"):
        driver.plan(JOB, Limits(weight=100))


def test_prefer_v2_on_a_hybrid_host_drives_the_controllerless_unified_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, FakeCgroupfs())
    layout = parse_mountinfo((FIXTURES / "cgroupv1" / "mountinfo").read_text())
    unified = tmp_path / "sys" / "fs" / "cgroup" / "unified"
    unified.mkdir(parents=True)
    # As captured: hugetlb is not bound to v1 on that host, so cgroup2 offers it.
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    (unified / "cgroup.subtree_control").write_text("")
    driver = open_driver("sched", layout=layout, prefer="v2", fs_root=tmp_path)
    assert isinstance(driver, V2Driver)
    assert driver.root_dir == unified / "sched"

    driver.ensure(TENANT, Limits())
    acme = unified / "sched" / "acme"
    assert (acme / "cgroup.subtree_control").read_text() == ""
    assert not (acme / "cpu.max").exists()
    plan = driver.plan(JOB, Limits())
    assert plan.writes == ()
    for limits, name in (
        (Limits(cpu_cores=1.0), "cpu"),
        (Limits(memory_bytes=MIB), "memory"),
        (Limits(pids_max=3), "pids"),
    ):
        with pytest.raises(CgroupError, match=f"'{name}' is not available.*offers: none"):
            driver.plan(JOB, limits)


# -- usage, population, pressure -------------------------------------------------------------


def test_read_usage_of_the_fixture_job(tree: Tree) -> None:
    driver = tree.driver("scheduler")
    assert driver.read_usage(CgroupPath(("acme", "job-42"))) == Usage(
        cpu_ns=4395818 * 1000,
        cpu_user_ns=3871094 * 1000,
        cpu_system_ns=524724 * 1000,
        memory_current_bytes=187035648,
        memory_peak_bytes=268402688,
        io_read_bytes=1040384 + 90267648,
        io_write_bytes=314572800,
        oom_kills=2,
        pids_current=3,
    )


def test_read_usage_without_memory_peak_uses_current(tree: Tree) -> None:
    job = tree.mount / "scheduler" / "acme" / "job-42"
    (job / "memory.peak").unlink()  # kernels before 5.19
    usage = tree.driver("scheduler").read_usage(CgroupPath(("acme", "job-42")))
    assert usage.memory_peak_bytes == usage.memory_current_bytes == 187035648


def test_read_usage_without_controllers_counts_zero(tree: Tree) -> None:
    (tree.mount / "cgroup.subtree_control").write_text("")
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    run_plan(driver.plan(JOB, Limits()))
    leaf = tree.mount / "sched" / "acme" / "job-7"
    (leaf / "cpu.stat").write_text("usage_usec 250\nuser_usec 200\nsystem_usec 50\nnice_usec 0\n")
    assert driver.read_usage(JOB) == Usage(
        cpu_ns=250_000, cpu_user_ns=200_000, cpu_system_ns=50_000
    )


def test_read_usage_of_a_missing_cgroup_names_the_file(tree: Tree) -> None:
    with pytest.raises(CgroupError, match=r"sched/acme/job-9/cpu.stat: No such file"):
        tree.driver().read_usage(CgroupPath(("acme", "job-9")))


def test_populated_follows_cgroup_events(tree: Tree) -> None:
    driver = tree.driver("scheduler")
    job = CgroupPath(("acme", "job-42"))
    assert driver.populated(job)
    (tree.mount / "scheduler" / "acme" / "job-42" / "cgroup.events").write_text(
        "populated 0\nfrozen 0\n"
    )
    assert not driver.populated(job)


def test_read_pressure(tree: Tree) -> None:
    pressure = tree.driver("scheduler").read_pressure(CgroupPath(("acme", "job-42")), "cpu")
    assert pressure.some.avg10 == pytest.approx(12.5)
    assert pressure.full is not None
    assert pressure.full.total_us == 18011248


# -- freeze, kill ----------------------------------------------------------------------------


def test_freeze_waits_for_the_kernel_to_confirm(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    acme = tree.mount / "sched" / "acme"
    (acme / "cgroup.events").write_text("populated 0\nfrozen 1\n")
    driver.freeze(TENANT)
    assert (acme / "cgroup.freeze").read_text() == "1"
    (acme / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    driver.thaw(TENANT)
    assert (acme / "cgroup.freeze").read_text() == "0"


def test_freeze_that_never_completes_is_thawed_again(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    with pytest.raises(CgroupError, match="did not report frozen"):
        driver.freeze(TENANT)
    assert (tree.mount / "sched" / "acme" / "cgroup.freeze").read_text() == "0"


def test_thaw_under_a_frozen_ancestor_names_the_ancestor(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    (tree.mount / "sched" / "cgroup.freeze").write_text("1\n")
    (tree.mount / "sched" / "acme" / "cgroup.events").write_text("populated 0\nfrozen 1\n")
    with pytest.raises(CgroupError, match=r"its ancestor .*/sched is frozen"):
        driver.thaw(TENANT)


def test_thaw_that_is_never_confirmed_is_an_error(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    (tree.mount / "sched" / "acme" / "cgroup.events").write_text("populated 0\nfrozen 1\n")
    with pytest.raises(CgroupError, match="did not report thawed"):
        driver.thaw(TENANT)
    assert (tree.mount / "sched" / "acme" / "cgroup.freeze").read_text() == "0"


def test_kill_writes_cgroup_kill_and_waits_until_empty(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    run_plan(driver.plan(JOB, Limits()))
    leaf = tree.mount / "sched" / "acme" / "job-7"
    driver.kill(JOB)
    assert (leaf / "cgroup.kill").read_text() == "1"
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(CgroupError, match="still has processes"):
        driver.kill(JOB)


def test_kill_of_a_missing_cgroup_does_nothing(tree: Tree) -> None:
    tree.driver().kill(CgroupPath(("acme", "job-404")))


# -- remove ----------------------------------------------------------------------------------


def test_remove_and_remove_tree(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits())
    run_plan(driver.plan(JOB, Limits()))
    run_plan(driver.plan(CgroupPath(("acme", "job-8")), Limits()))
    with pytest.raises(CgroupError, match="busy"):
        driver.remove(TENANT)
    driver.remove(JOB)
    driver.remove(JOB)  # already gone is fine
    assert driver.children(TENANT) == ["job-8"]
    driver.remove_tree(CgroupPath(()))
    assert not (tree.mount / "sched").exists()
    assert (tree.mount / "scheduler").exists()  # a different root is left alone
    driver.remove_tree(CgroupPath(()))  # nothing left to remove


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root", ["", "/sched", "/sys/fs/cgroup/sched", "..", "../sched", "a/../b", "a//b", "a/", "./a"]
)
def test_bad_roots_are_refused(tree: Tree, root: str) -> None:
    with pytest.raises(CgroupError, match="cgroup root"):
        open_driver(root, layout=tree.layout, fs_root=tree.fs_root)
    with pytest.raises(CgroupError, match="cgroup root"):
        V2Driver(tree.mount, root)


def test_systemd_style_root_is_accepted(tree: Tree) -> None:
    driver = tree.driver("system.slice/scheduler.service")
    assert driver.root_dir == tree.mount / "system.slice" / "scheduler.service"


@pytest.mark.parametrize("segment", ["..", ".", "a/b", "/", "", "Acme", "job-1/../x"])
def test_bad_segments_never_become_paths(segment: str) -> None:
    with pytest.raises(ValueError, match="not a valid cgroup name"):
        CgroupPath(("acme", segment))


# -- the choice of driver --------------------------------------------------------------------


def v1_tree(tmp_path: Path, mountinfo: str) -> Layout:
    layout = parse_mountinfo((FIXTURES / "cgroupv1" / mountinfo).read_text())
    for mount in {*layout.v1.values(), layout.unified or ""} - {""}:
        (tmp_path / mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return layout


def test_pure_v2_gets_the_v2_driver(tree: Tree) -> None:
    driver = open_driver("sched", layout=tree.layout, fs_root=tree.fs_root)
    assert driver.name == "v2"
    with pytest.raises(CgroupError, match="v1 driver needs"):
        open_driver("sched", layout=tree.layout, prefer="v1", fs_root=tree.fs_root)


def test_hybrid_gets_the_v1_driver_with_the_unified_mirror(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path, "mountinfo")
    driver = open_driver("sched", layout=layout, fs_root=tmp_path)
    assert isinstance(driver, V1Driver)
    assert driver.name == "v1"
    assert driver.has_unified
    assert driver.controllers == {"cpu", "cpuacct", "memory", "pids", "freezer", "blkio"}
    base = tmp_path / "sys" / "fs" / "cgroup"
    assert driver.directories(JOB) == tuple(
        base / h / "sched" / "acme" / "job-7"
        for h in ("memory", "cpu", "cpuacct", "pids", "freezer", "blkio", "unified")
    )


def test_pure_v1_cannot_prefer_v2(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path, "mountinfo-comounted")
    v1_only = Layout(v1=layout.v1, unified=None, mode="v1")
    driver = open_driver("sched", layout=v1_only, fs_root=tmp_path)
    assert isinstance(driver, V1Driver)
    assert not driver.has_unified
    with pytest.raises(CgroupError, match="needs a cgroup2 mount"):
        open_driver("sched", layout=v1_only, prefer="v2", fs_root=tmp_path)


def test_v1_plan_with_co_mounted_cpu_cpuacct(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path, "mountinfo-comounted")
    base = tmp_path / "sys" / "fs" / "cgroup"
    (base / "memory" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    # The tenant's own quota is half a CPU: v1 would refuse more for the job (EINVAL).
    tenant_cpu = base / "cpu,cpuacct" / "sched" / "acme"
    tenant_cpu.mkdir(parents=True)
    (tenant_cpu / "cpu.cfs_quota_us").write_text("50000\n")
    (tenant_cpu / "cpu.cfs_period_us").write_text("100000\n")
    driver = open_driver("sched", layout=layout, fs_root=tmp_path)
    plan = driver.plan(JOB, Limits(cpu_cores=2.0, memory_bytes=64 * MIB, pids_max=10, weight=50))
    leaves = tuple(
        str(base / h / "sched" / "acme" / "job-7")
        for h in ("memory", "cpu,cpuacct", "pids", "freezer", "blkio", "unified")
    )
    memory, cpu, pids = leaves[0], leaves[1], leaves[2]
    assert plan == LaunchPlan(
        mkdirs=leaves,
        writes=(
            (f"{cpu}/cpu.cfs_period_us", "100000"),
            (f"{cpu}/cpu.cfs_quota_us", "50000"),
            (f"{cpu}/cpu.shares", "512"),
            (f"{memory}/memory.limit_in_bytes", str(64 * MIB)),
            (f"{memory}/memory.memsw.limit_in_bytes", str(64 * MIB)),
            (f"{pids}/pids.max", "10"),
        ),
        procs=tuple(f"{leaf}/cgroup.procs" for leaf in leaves),
        dirs=leaves,
    )


def test_v1_limit_for_an_unmounted_controller_names_it(tmp_path: Path) -> None:
    layout = v1_tree(tmp_path, "mountinfo-comounted")
    no_pids = Layout(
        v1={c: m for c, m in layout.v1.items() if c != "pids"}, unified=None, mode="v1"
    )
    driver = open_driver("sched", layout=no_pids, fs_root=tmp_path)
    with pytest.raises(CgroupError, match=r"'pids' is not mounted \(needed for pids_max\)"):
        driver.plan(JOB, Limits(pids_max=5))


def test_helper_dirs_are_hidden_leaves_of_the_root(tree: Tree) -> None:
    driver = tree.driver("scheduler")
    helper = driver.helper_dir("warmer")
    assert helper == tree.mount / "scheduler" / ".warmer"
    fs.make_dir(helper)
    assert ".warmer" not in driver.children(CgroupPath(()))
    assert "acme" in driver.children(CgroupPath(()))
    with pytest.raises(ValueError, match="not a valid cgroup name"):
        driver.helper_dir("../escape")


# -- delegation (systemd Delegate=yes) ---------------------------------------------------------


class Processes:
    """The two process rules of cgroupfs a delegated unit meets: writing a pid to
    cgroup.procs moves it out of every other cgroup, and cgroup.subtree_control refuses to
    enable controllers while the cgroup holds processes (EBUSY)."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.write = fs.write_file

    def __call__(self, path: Path | str, value: str) -> None:
        path = Path(path)
        if path.name == "cgroup.procs":
            for procs in self.mount.rglob("cgroup.procs"):
                kept = [p for p in procs.read_text().split() if p != value.strip()]
                procs.write_text("".join(f"{p}\n" for p in kept))
            path.write_text(path.read_text() + f"{value.strip()}\n")
            return
        if path.name == "cgroup.subtree_control" and (path.parent / "cgroup.procs").read_text():
            cause = OSError(errno.EBUSY, "Device or resource busy")
            raise CgroupError(f"cannot write {path}: Device or resource busy") from cause
        self.write(path, value)


@pytest.fixture
def unit(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/system.slice/scheduler.service as systemd delegates it: controllers offered, none
    enabled for children, the agent (100) and its embedded Postgres (101) inside."""
    slice_ = tree.mount / "system.slice"
    fs.make_dir(slice_)
    (slice_ / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    service = slice_ / "scheduler.service"
    fs.make_dir(service)
    (service / "cgroup.procs").write_text("100\n101\n")
    monkeypatch.setattr(fs, "write_file", Processes(tree.mount))
    return service


def test_a_delegated_unit_moves_its_processes_to_a_leaf_and_enables_controllers(
    tree: Tree, unit: Path
) -> None:
    driver = open_driver(
        "system.slice/scheduler.service/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/scheduler.service",
    )
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(TENANT, Limits(cpu_cores=1.0))
    assert (unit / "cgroup.procs").read_text() == ""
    assert (unit / "supervisor" / "cgroup.procs").read_text().split() == ["100", "101"]
    assert parse_controllers((unit / "cgroup.subtree_control").read_text()) == {
        "cpu",
        "io",
        "memory",
        "pids",
    }
    assert (unit / "jobs" / "acme" / "cpu.max").read_text() == "100000 100000"
    # Nothing above the unit was written.
    assert (unit.parent / "cgroup.subtree_control").read_text() == "cpu io memory pids\n"
    # A second start finds everything in place.
    driver.ensure(CgroupPath(()), Limits())
    assert (unit / "supervisor" / "cgroup.procs").read_text().split() == ["100", "101"]


def test_a_parent_that_is_not_ours_is_never_touched(tree: Tree, unit: Path) -> None:
    driver = open_driver(
        "system.slice/scheduler.service/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/other.service",
    )
    driver.ensure(CgroupPath(()), Limits())
    assert (unit / "cgroup.procs").read_text().split() == ["100", "101"]
    assert not (unit / "supervisor").exists()
    with pytest.raises(CgroupError, match=r"'cpu' is not available.*offers: none"):
        driver.ensure(TENANT, Limits(cpu_cores=1.0))


def test_a_root_deeper_in_the_unit_gets_controllers_at_every_level(tree: Tree, unit: Path) -> None:
    driver = open_driver(
        "system.slice/scheduler.service/batch/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/scheduler.service",
    )
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(TENANT, Limits(memory_bytes=MIB))
    assert (unit / "supervisor" / "cgroup.procs").read_text().split() == ["100", "101"]
    assert "memory" in parse_controllers((unit / "batch" / "cgroup.subtree_control").read_text())
    assert (unit / "batch" / "jobs" / "acme" / "memory.max").read_text() == str(MIB)


def test_an_agent_in_the_top_cgroup_takes_nothing(tree: Tree, unit: Path) -> None:
    driver = open_driver(
        "system.slice/scheduler.service/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/",
    )
    driver.ensure(CgroupPath(()), Limits())
    assert (unit / "cgroup.procs").read_text().split() == ["100", "101"]
    assert (unit / "cgroup.subtree_control").read_text() == ""


def test_a_root_named_like_the_supervisor_leaf_is_refused(tree: Tree, unit: Path) -> None:
    driver = open_driver(
        "system.slice/scheduler.service/supervisor",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/scheduler.service",
    )
    with pytest.raises(CgroupError, match="choose another SCHEDULER_CGROUP_ROOT"):
        driver.ensure(CgroupPath(()), Limits())


def test_own_unified_cgroup_reads_the_v2_line(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("12:pids:/x\n0::/system.slice/scheduler.service\n")
    assert own_unified_cgroup(proc) == "/system.slice/scheduler.service"
    proc.write_text("12:pids:/x\n")
    assert own_unified_cgroup(proc) is None
    assert own_unified_cgroup(tmp_path / "missing") is None


def test_release_cpu_lifts_the_quota_of_a_job_and_below(tree: Tree) -> None:
    driver = tree.driver()
    driver.ensure(TENANT, Limits(cpu_cores=2.0))
    run_plan(driver.plan(JOB, Limits(cpu_cores=0.01)))
    job = tree.mount / "sched" / "acme" / "job-7"
    assert (job / "cpu.max").read_text() == "1000 100000"
    driver.release_cpu(JOB)
    assert (job / "cpu.max").read_text() == "max 100000"
    # The tenant's own limit is not the job's to lift.
    assert (tree.mount / "sched" / "acme" / "cpu.max").read_text() == "200000 100000"


# -- systemd's delegation mark (trusted.delegate) -------------------------------------------


def mark_delegated(cgroup: Path) -> None:
    """What systemd does to a unit's cgroup with Delegate=yes (as root; the fake tree lives
    on a filesystem that keeps trusted.* attributes)."""
    os.setxattr(cgroup, "trusted.delegate", b"1")


def test_a_unit_cgroup_holding_the_agent_itself_is_refused_with_the_remedy(
    tree: Tree, unit: Path
) -> None:
    # systemd < 254 starts the next main process in the unit's own cgroup: enabling
    # controllers there would make every restart with a job running fail (219/CGROUP).
    mark_delegated(unit)
    (unit / "cgroup.procs").write_text(f"{os.getpid()}\n101\n")
    driver = open_driver(
        "system.slice/scheduler.service/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/scheduler.service",
    )
    with pytest.raises(CgroupError, match=r"scheduler-jobs.service.*DelegateSubgroup=supervisor"):
        driver.ensure(CgroupPath(()), Limits())
    assert (unit / "cgroup.subtree_control").read_text() == ""
    assert not (unit / "supervisor").exists()


def test_delegate_subgroup_is_recognised_by_the_unit_s_mark(tree: Tree, unit: Path) -> None:
    # DelegateSubgroup=supervisor (systemd >= 254): the agent starts in .../supervisor, the
    # unit's cgroup above it is delegated and empty.
    mark_delegated(unit)
    fs.make_dir(unit / "supervisor")
    (unit / "supervisor" / "cgroup.procs").write_text((unit / "cgroup.procs").read_text())
    (unit / "cgroup.procs").write_text("")
    driver = open_driver(
        "system.slice/scheduler.service/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/scheduler.service/supervisor",
    )
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(TENANT, Limits(cpu_cores=1.0))
    assert (unit / "jobs" / "acme" / "cpu.max").read_text() == "100000 100000"
    assert (unit / "supervisor" / "cgroup.procs").read_text().split() == ["100", "101"]


def test_a_holder_unit_s_placeholder_moves_to_a_leaf(tree: Tree, unit: Path) -> None:
    # deploy/systemd/scheduler-jobs.service: a delegated unit whose only process is a
    # placeholder; the agent runs in scheduler.service, which it leaves alone.
    holder = unit.parent / "scheduler-jobs.service"
    fs.make_dir(holder)
    (holder / "cgroup.procs").write_text("4242\n")
    mark_delegated(holder)
    driver = open_driver(
        "system.slice/scheduler-jobs.service/jobs",
        layout=tree.layout,
        fs_root=tree.fs_root,
        own_cgroup="/system.slice/scheduler.service",
    )
    driver.ensure(CgroupPath(()), Limits())
    driver.ensure(TENANT, Limits(cpu_cores=0.5))
    assert (holder / "supervisor" / "cgroup.procs").read_text().split() == ["4242"]
    assert (holder / "jobs" / "acme" / "cpu.max").read_text() == "50000 100000"
    assert (unit / "cgroup.procs").read_text().split() == ["100", "101"]
    assert (unit / "cgroup.subtree_control").read_text() == ""


def test_a_root_without_cpu_refuses_to_start_and_names_the_remedy(tree: Tree) -> None:
    # A stock systemd host enables only "memory pids" at the top.
    (tree.mount / "cgroup.subtree_control").write_text("memory pids\n")
    driver = tree.driver("sched")
    driver.ensure(CgroupPath(()), Limits())
    assert driver.missing_controllers() == ("cpu", "io")
    with pytest.raises(CgroupError, match=r"cpu, io not available.*systemctl set-property"):
        check_v2_controllers(driver, explicit=False)
    # Chosen explicitly (cgroup_driver = "v2"), the agent runs without them, said at start.
    check_v2_controllers(driver, explicit=True)
    # io alone missing: jobs without io limits run; the agent starts.
    (tree.mount / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (tree.mount / "sched" / "cgroup.controllers").write_text("cpu memory pids\n")
    assert driver.missing_controllers() == ("io",)
    check_v2_controllers(driver, explicit=False)


@pytest.mark.anyio
async def test_the_async_facades_kill_waits_on_the_loop_as_the_driver_does(tree: Tree) -> None:
    """The facade's kill: cgroup.kill written, the wait polled with anyio.sleep (the loop
    runs other tasks meanwhile), and the same verdicts as the driver's own kill."""
    driver = tree.driver()
    driver.kill_timeout = 0.3
    calls = async_driver(driver)
    assert async_driver(driver) is calls  # one facade per driver
    await calls.ensure(TENANT, Limits())
    run_plan(await calls.plan(JOB, Limits()))
    leaf = tree.mount / "sched" / "acme" / "job-7"
    await calls.kill(JOB)
    assert (leaf / "cgroup.kill").read_text() == "1"
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        with pytest.raises(CgroupError, match="still has processes"):
            await calls.kill(JOB)
        tg.cancel_scope.cancel()
    assert ticks >= 10  # the loop ran meanwhile: 0.3 s of waiting, 10 ms ticks
    (leaf / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    await calls.kill(JOB)
    await calls.kill(CgroupPath(("acme", "job-404")))  # missing: nothing to do
