"""Pure rules of tenant isolation: who a job runs as, what its /sys/fs/cgroup shows, the pids
caps, and the monitor flags they become."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.agent.tenants import node_pids_cap, tenant_limits
from scheduler.cgroups.base import LaunchPlan
from scheduler.config import make_settings
from scheduler.errors import ConfigError, SandboxError
from scheduler.runtime.cgroupview import CgroupView, _host_cgroup_mounts
from scheduler.runtime.launcher import sandbox_args
from scheduler.runtime.sandbox import TenantIdentity, tenant_credentials
from scheduler.runtime.spec import Credentials, LaunchSpec

ALPHA = TenantIdentity(uid=200001, gid=200001, range_first=200000)
USERS = {"postgres": (105, 110), "builder": (1500, 1500), "alpha-svc": (200001, 200001)}


def lookup(name: str) -> tuple[int, int]:
    return USERS[name]


def creds(run_as: str | None, agent: tuple[int, int] = (0, 0)) -> Credentials:
    return tenant_credentials(
        "alpha", ALPHA, run_as, agent_ids=agent, lookup=lookup, gid_of=lambda uid: uid
    )


def test_a_tenant_runs_as_its_own_ids_unless_the_operator_says_otherwise() -> None:
    assert creds(None) == Credentials(200001, 200001)
    assert creds("alpha-svc") == Credentials(200001, 200001)
    assert creds("250000:250001") == Credentials(250000, 250001)


@pytest.mark.parametrize(
    ("run_as", "reason"),
    [
        ("postgres", "database server's uid 105"),
        ("builder", "system uid 1500"),  # above 1000 but below the tenant range
        ("999", "system uid 999"),
        ("250000:50", "system gid 50"),
        ("root", "other than root"),
    ],
)
def test_run_as_refusals(run_as: str, reason: str) -> None:
    with pytest.raises(SandboxError, match=reason):
        creds(run_as)


def test_run_as_of_the_agents_ids_is_refused() -> None:
    with pytest.raises(SandboxError, match="agent's uid 260000"):
        creds("260000", agent=(260000, 260000))


def test_cgroup_view_binds_each_hierarchy_at_its_mount_point() -> None:
    mounts = {"/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/unified"}
    view = CgroupView(
        is_mount=mounts.__contains__,
        cgroup_mounts=lambda _: frozenset({"memory", "cpu,cpuacct", "unified", "cpuset"}),
    )
    dirs = (
        "/sys/fs/cgroup/memory/sched/alpha/job-1",
        "/sys/fs/cgroup/cpu,cpuacct/sched/alpha/job-1",
        "/sys/fs/cgroup/unified/sched/alpha/job-1",
    )
    binds, hides = view.entries(dirs)
    assert binds == (
        ("memory", dirs[0]),
        ("cpu,cpuacct", dirs[1]),
        ("unified", dirs[2]),
    )
    assert hides == ("cpuset",)


def test_cgroup_view_on_a_v2_host_binds_the_root_and_elsewhere_nothing() -> None:
    v2 = CgroupView(is_mount=lambda p: p == "/sys/fs/cgroup/", cgroup_mounts=lambda _: frozenset())
    leaf = "/sys/fs/cgroup/sched/alpha/job-1"
    assert v2.entries((leaf,)) == (((".", leaf),), ())
    assert v2.entries(("/srv/cgroup/sched/alpha/job-1",)) == ((), ())


def test_pids_caps(tmp_path: Path) -> None:
    pid_max = tmp_path / "pid_max"
    pid_max.write_text("4194304\n")
    assert node_pids_cap(0, str(pid_max)) == 1048576
    assert node_pids_cap(500, str(pid_max)) == 500
    row = {"cpu_limit": None, "memory_limit_bytes": None, "weight": 100, "pids_limit": None}
    assert tenant_limits(row, pids_cap=8192).pids_max == 8192  # type: ignore[arg-type]
    row["pids_limit"] = 100
    assert tenant_limits(row, pids_cap=8192).pids_max == 100  # type: ignore[arg-type]
    row["pids_limit"] = 100_000
    assert tenant_limits(row, pids_cap=8192).pids_max == 8192  # type: ignore[arg-type]


def test_isolation_settings_are_checked(tmp_path: Path) -> None:
    settings = make_settings(state_dir=tmp_path, trusted_tenants=" ci, batch ,")
    assert settings.sandbox.trusted_tenant_names == {"ci", "batch"}
    with pytest.raises(ConfigError, match="trusted_tenants"):
        make_settings(state_dir=tmp_path, trusted_tenants="ci,../x")
    with pytest.raises(ConfigError, match="max_pids"):
        make_settings(state_dir=tmp_path, max_pids=-1)


def test_monitor_flags_for_the_view_and_the_filter(tmp_path: Path) -> None:
    spec = LaunchSpec(
        job_id=1,
        attempt=1,
        argv=("true",),
        env={},
        cwd="/",
        hostname="job-1",
        run_dir=tmp_path,
        plan=LaunchPlan(),
        credentials=Credentials(200001, 200001),
        cgroup_view=(("memory", "/sys/fs/cgroup/memory/a/job-1"),),
        cgroup_hide=("cpuset",),
        seccomp=False,
    )
    args = sandbox_args(spec)
    assert "--no-seccomp" in args
    assert args[-5:] == [
        "--cgroup-view",
        "memory",
        "/sys/fs/cgroup/memory/a/job-1",
        "--cgroup-hide",
        "cpuset",
    ]


def test_the_cgroup_mounts_under_the_view_root_are_read_from_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "27 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "28 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
        "29 1 0:27 / /srv/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "30 25 0:28 / /sys/fs/cgroup/odd rw - tmpfs tmpfs rw\n"
    )
    assert _host_cgroup_mounts("/sys/fs/cgroup", str(mountinfo)) == {
        "unified",
        "cpu,cpuacct",
        "systemd",
    }
