"""The sandbox's pure rules: run_as values, network permission, the writable-layer policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.agent.isolation import isolator_for
from scheduler.cgroups.base import LaunchPlan
from scheduler.config import load_settings
from scheduler.errors import ConfigError, ImageError, LaunchError, SandboxError
from scheduler.runtime.images import check_name
from scheduler.runtime.launcher import sandbox_args
from scheduler.runtime.sandbox import (
    SandboxPolicy,
    host_network,
    keep_rootfs,
    resolve_run_as,
)
from scheduler.runtime.spec import Credentials, LaunchSpec


def users(name: str) -> tuple[int, int]:
    return {"nobody": (65534, 65534), "alice": (1000, 1001), "toor": (0, 0)}[name]


def test_run_as_names_and_ids() -> None:
    assert resolve_run_as("nobody", users) == Credentials(65534, 65534)
    assert resolve_run_as("alice", users) == Credentials(1000, 1001)
    assert resolve_run_as("4321:8765", users) == Credentials(4321, 8765)
    assert resolve_run_as("4321", users, gid_of=lambda uid: uid + 1) == Credentials(4321, 4322)


@pytest.mark.parametrize("bad", ["root", "0", "0:1", "1:0", "../x", "a/b", "", "Alice", "-1"])
def test_run_as_refuses_root_and_paths(bad: str) -> None:
    with pytest.raises(SandboxError):
        resolve_run_as(bad, users)


def test_a_name_that_is_root_in_disguise_is_refused() -> None:
    with pytest.raises(SandboxError, match="never run as root"):
        resolve_run_as("toor", users)


def test_unknown_user_is_named() -> None:
    with pytest.raises(SandboxError, match="'ghost' does not exist"):
        resolve_run_as("ghost", users)


def test_network_needs_the_operators_permission() -> None:
    assert host_network(False, allowed=False) is False
    assert host_network(False, allowed=True) is False
    assert host_network(True, allowed=True) is True
    with pytest.raises(SandboxError, match="allow_network"):
        host_network(True, allowed=False)


def test_keep_upper_policy() -> None:
    assert not keep_rootfs("never", succeeded=False)
    assert keep_rootfs("always", succeeded=True)
    assert keep_rootfs("on_failure", succeeded=False)
    assert not keep_rootfs("on_failure", succeeded=True)
    with pytest.raises(SandboxError, match="keep_upper"):
        SandboxPolicy(keep_upper="sometimes")  # type: ignore[arg-type]


def test_settings_validate_the_sandbox() -> None:
    settings = load_settings(
        {}, environ={"SCHEDULER_ALLOW_NETWORK": "yes", "SCHEDULER_KEEP_UPPER": "on_failure"}
    )
    assert settings.sandbox.allow_network is True
    assert settings.sandbox.keep_upper == "on_failure"
    assert settings.sandbox.run_as == "nobody"
    assert (
        load_settings({}, environ={"SCHEDULER_ALLOW_NETWORK": "0"}).sandbox.allow_network is False
    )
    with pytest.raises(ConfigError, match="boolean"):
        load_settings({}, environ={"SCHEDULER_ALLOW_NETWORK": "maybe"})
    with pytest.raises(ConfigError, match="run_as"):
        load_settings({}, environ={"SCHEDULER_RUN_AS": "root"})


def test_settings_file_takes_a_toml_boolean(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("allow_network = true\n")
    assert load_settings({}, environ={}, config_file=config).sandbox.allow_network is True


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "/abs", "UP", "", "x" * 64, "a.b"])
def test_image_names_cannot_be_paths(bad: str) -> None:
    with pytest.raises(ImageError, match="invalid"):
        check_name(bad)


def spec(**extra: object) -> LaunchSpec:
    values: dict[str, object] = {
        "job_id": 7,
        "attempt": 1,
        "argv": ("true",),
        "env": {},
        "cwd": "/",
        "hostname": "h",
        "run_dir": Path("/state/runs/7-1"),
        "plan": LaunchPlan(),
    }
    values.update(extra)
    return LaunchSpec(**values)  # type: ignore[arg-type]


def test_monitor_flags_for_the_sandbox() -> None:
    assert sandbox_args(spec()) == []
    args = sandbox_args(
        spec(
            credentials=Credentials(65534, 65534),
            host_network=True,
            layers=(Path("/img/1"), Path("/img/0")),
            rootfs_dir=Path("/state/runs/7-1/rootfs"),
        )
    )
    assert args == [
        "--uid", "65534", "--gid", "65534", "--host-net",
        "--overlay-dir", "/state/runs/7-1/rootfs",
        "--lower", "/img/1", "--lower", "/img/0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        {"credentials": Credentials(0, 0)},
        {"layers": (Path("/img/0"),)},
        {"layers": (Path("/img:0"),), "rootfs_dir": Path("/r")},
        {"layers": (Path("/img,0"),), "rootfs_dir": Path("/r")},
        {"layers": (Path("rel"),), "rootfs_dir": Path("/r")},
    ],
)
def test_monitor_flags_refuse_what_the_kernel_would_misread(extra: dict[str, object]) -> None:
    with pytest.raises(LaunchError):
        sandbox_args(spec(**extra))


def test_an_unknown_default_user_stops_the_agent_at_start(tmp_path: Path) -> None:
    settings = load_settings({"state_dir": tmp_path}, environ={"SCHEDULER_RUN_AS": "no_such_x"})
    with pytest.raises(ConfigError, match="'no_such_x' does not exist"):
        isolator_for(settings)
    assert (
        isolator_for(load_settings({"state_dir": tmp_path}, environ={})).policy.default_run_as
        == "nobody"
    )
