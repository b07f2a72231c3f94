from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from scheduler.config import load_settings
from scheduler.errors import ConfigError
from scheduler.units import format_bytes, parse_cores, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("268435456", 268435456),
        ("256M", 256 * 2**20),
        ("256MiB", 256 * 2**20),
        ("1G", 2**30),
        ("1.5K", 1536),
        ("2g", 2 * 2**30),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5", "12X", "M"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|whole number"):
        parse_size(text)


def test_parse_duration_and_cores() -> None:
    assert parse_duration("30") == 30
    assert parse_duration("1.5m") == 90
    assert parse_duration("250ms") == Decimal("0.250")
    assert parse_cores("0.5") == Decimal("0.5")
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(ValueError):
            parse_cores(bad)
    with pytest.raises(ValueError):
        parse_duration("5 weeks")


def test_format_bytes() -> None:
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512B"
    assert format_bytes(3 * 2**20) == "3.0MiB"


def test_settings_precedence_flags_env_file(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('cgroup_root = "from-file"\nnode_name = "file-node"\nmax_running = 7\n')
    env = {"SCHEDULER_NODE_NAME": "env-node", "SCHEDULER_STATE_DIR": str(tmp_path)}
    s = load_settings({"cgroup_root": "from-flag"}, environ=env, config_file=config)
    assert s.cgroups.root == "from-flag"
    assert s.node.name == "env-node"
    assert s.agent.max_running == 7
    assert s.paths.state == tmp_path
    assert s.http.addr == "127.0.0.1:8420"
    assert s.db.url is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCHEDULER_MAX_RUNNING": "many"}, "SCHEDULER_MAX_RUNNING"),
        ({"SCHEDULER_MAX_RUNNING": "0"}, "max_running must be at least 1"),
        ({"SCHEDULER_HTTP_ADDR": "nowhere"}, "HOST:PORT"),
        ({"SCHEDULER_CGROUP_DRIVER": "v3"}, "cgroup_driver"),
        ({"SCHEDULER_NODE_NAME": "a/b"}, "node name"),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({}, environ=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings({}, environ={}, config_file=config)


def test_output_limit_setting() -> None:
    assert load_settings({}, environ={}).limits.output_limit_bytes == 1 << 30
    env = {"SCHEDULER_OUTPUT_LIMIT_BYTES": "4096"}
    assert load_settings({}, environ=env).limits.output_limit_bytes == 4096
    with pytest.raises(ConfigError, match=r"output_limit_bytes must be in \[0, 1 PiB\]"):
        load_settings({}, environ={"SCHEDULER_OUTPUT_LIMIT_BYTES": "-1"})


def test_retention_settings() -> None:
    defaults = load_settings({}, environ={})
    assert defaults.retention.output_seconds == 30 * 86400
    assert defaults.retention.jobs_seconds is None  # rows are kept unless asked
    env = {"SCHEDULER_OUTPUT_RETENTION": "off", "SCHEDULER_JOB_RETENTION": "90d"}
    chosen = load_settings({}, environ=env)
    assert chosen.retention.output_seconds is None
    assert chosen.retention.jobs_seconds == 90 * 86400
    for bad, message in (
        ({"SCHEDULER_JOB_RETENTION": "soon"}, "job_retention: 'soon' is not a duration"),
        ({"SCHEDULER_OUTPUT_RETENTION": "0s"}, "output_retention must be between 1s"),
        ({"SCHEDULER_RETENTION_INTERVAL_SECONDS": "0"}, "retention_interval_seconds"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings({}, environ=bad)
