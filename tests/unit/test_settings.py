"""Settings: grouped, typed, converted by each field's type; bad values refused by name."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from scheduler import config
from scheduler.config import GROUPS, KEYS, Settings, env_var, load_settings, make_settings
from scheduler.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# Documented variables that are not settings of the agent (read by other parts).
NOT_SETTINGS = {
    "SCHEDULER_ARRAY_ID",
    "SCHEDULER_ARRAY_INDEX",
    "SCHEDULER_FAILPOINTS",
    "SCHEDULER_PG_ADDR",
    "SCHEDULER_PG_BINDIR",
    "SCHEDULER_PG_SSLMODE",
    "SCHEDULER_PROMETHEUS_URL",
    "SCHEDULER_TEST_SLOWDOWN",
}


def _choice_keys() -> dict[str, tuple[str, ...]]:
    found = {}
    for key, (group, field) in KEYS.items():
        kind = typing.get_type_hints(GROUPS[group])[field]
        if typing.get_origin(kind) is typing.Literal:
            found[key] = tuple(typing.get_args(kind))
    return found


def test_every_field_has_one_key_and_the_documented_variables_exist() -> None:
    fields = {(g, f.name) for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    assert sorted(KEYS.values()) == sorted(fields)
    assert len(set(KEYS.values())) == len(KEYS)
    documented: set[str] = set()
    for doc in (ROOT / "docs/operations.md", ROOT / "README.md"):
        documented |= set(re.findall(r"SCHEDULER_[A-Z_]*[A-Z]", doc.read_text()))
    missing = documented - {env_var(key) for key in KEYS} - NOT_SETTINGS
    assert not missing, missing
    operations = (ROOT / "docs/operations.md").read_text()
    undocumented = [k for k in KEYS if env_var(k) not in operations and k not in operations]
    assert not undocumented, undocumented


def test_the_choices_are_literals() -> None:
    assert _choice_keys() == {
        "cgroup_driver": ("auto", "v1", "v2"),
        "log_level": ("debug", "info", "warning", "error", "critical"),
        "log_format": ("console", "json"),
        "keep_upper": ("never", "always", "on_failure"),
    }


@pytest.mark.parametrize("key", sorted(_choice_keys()))
def test_each_choice_refuses_a_bad_value_naming_the_variable(key: str) -> None:
    variable = env_var(key)
    with pytest.raises(ConfigError, match=f"^{variable}: {key}: expected one of ") as caught:
        load_settings({}, environ={variable: "bogus"})
    assert "'bogus'" in str(caught.value)
    # Built in code, the group itself refuses it too, naming key and variable.
    group, field = KEYS[key]
    with pytest.raises(ConfigError, match=rf"^{key} \({variable}\) must be one of"):
        GROUPS[group](**{field: "bogus"})
    for choice in _choice_keys()[key]:
        settings = load_settings({}, environ={variable: choice})
        assert getattr(getattr(settings, group), field) == choice


def test_each_type_converts_from_text() -> None:
    settings = load_settings(
        {},
        environ={
            "SCHEDULER_MAX_RUNNING": " 12 ",
            "SCHEDULER_POLL_INTERVAL": "0.25",
            "SCHEDULER_ALLOW_NETWORK": "yes",
            "SCHEDULER_STATE_DIR": "~/x",
            "SCHEDULER_RUNTIME_DIR": "/run/s",
            "SCHEDULER_DATABASE_URL": "postgresql:///db",
            "SCHEDULER_CGROUP_DRIVER": "v1",
        },
    )
    assert settings.agent.max_running == 12 and type(settings.agent.max_running) is int
    assert settings.agent.poll_interval == 0.25
    assert settings.sandbox.allow_network is True
    assert settings.paths.state == Path("~/x").expanduser()
    assert settings.paths.runtime == Path("/run/s")
    assert settings.db.url == "postgresql:///db"
    assert settings.cgroups.driver == "v1"
    # An int where a float is expected is that float; typed values pass through.
    typed = make_settings(poll_interval=1, state_dir=Path("/s"), node_name="n1")
    assert typed.agent.poll_interval == 1.0 and type(typed.agent.poll_interval) is float
    assert typed.paths.runs_dir == Path("/s/runs") and typed.node.name == "n1"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SCHEDULER_MAX_RUNNING", "1.5", "SCHEDULER_MAX_RUNNING: max_running: "),
        ("SCHEDULER_MAX_RUNNING", "many", "SCHEDULER_MAX_RUNNING: max_running: "),
        ("SCHEDULER_POLL_INTERVAL", "nan", "expected a finite number"),
        ("SCHEDULER_POLL_INTERVAL", "inf", "expected a finite number"),
        ("SCHEDULER_POLL_INTERVAL", "fast", "SCHEDULER_POLL_INTERVAL: poll_interval: "),
        ("SCHEDULER_ALLOW_NETWORK", "maybe", "expected a boolean"),
        ("SCHEDULER_MAX_RUNNING", "0", "max_running must be at least 1"),
        ("SCHEDULER_HTTP_MAX_CONNECTIONS", "-3", "http_max_connections must be in"),
    ],
)
def test_bad_numbers_are_refused(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({}, environ={variable: value})


def test_a_toml_value_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text("[scheduler]\nmax_running = true\n")
    with pytest.raises(ConfigError, match="max_running: expected a int"):
        load_settings({}, environ={}, config_file=file)
    file.write_text('[scheduler]\nlog_format = 3\nmax_running = "7"\n')
    with pytest.raises(ConfigError, match="log_format: expected a string"):
        load_settings({}, environ={}, config_file=file)
    file.write_text('[scheduler]\nlog_format = "json"\nmax_running = "7"\n')
    loaded = load_settings({}, environ={}, config_file=file)
    assert (loaded.log.format, loaded.agent.max_running) == ("json", 7)
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        make_settings(nope=1)  # not a setting


def test_config_imports_nothing_of_runtime() -> None:
    source = Path(config.__file__).read_text()
    assert "scheduler.runtime" not in source and "from scheduler import runtime" not in source
    assert "type: ignore" not in source
    assert Settings().sandbox.run_as == "nobody"
