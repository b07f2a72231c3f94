"""Settings: command-line flags, then SCHEDULER_* environment variables, then a TOML file.

:class:`Settings` holds one frozen group per concern (``settings.db``, ``settings.http``,
...). Each setting also has a flat key, the name operators use: its environment variable is
the upper-cased key with the SCHEDULER_ prefix, its TOML key and flag are the key itself
(``KEYS`` maps each key to its group and field). A value is converted by the field's type
(``int``, ``float``, ``bool``, ``Path``, a ``Literal`` of choices, ``str``, optional or not),
and every group checks its own values; errors name the key and where the value came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from scheduler.errors import ConfigError, SandboxError
from scheduler.labels import LabelError, parse_list
from scheduler.names import NAME
from scheduler.sandboxrules import DEFAULT_RUN_AS, KeepUpper, check_run_as
from scheduler.units import UnitError, parse_duration

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CgroupDriverChoice = Literal["auto", "v1", "v2"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["console", "json"]


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/scheduler")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "scheduler"


def _check_choices(group: DataclassInstance) -> None:
    """A field typed as a Literal holds one of its choices (whoever built the group)."""
    for field in dataclasses.fields(group):
        choices = _choices(_hints(type(group))[field.name])
        value = getattr(group, field.name)
        if choices and value not in choices:
            key = _key_of(type(group), field.name)
            raise ConfigError(
                f"{key} ({env_var(key)}) must be one of {', '.join(choices)}: got {value!r}"
            )


@dataclass(frozen=True)
class DbSettings:
    """The database: where it is (None: the embedded Postgres) and the API's own pool."""

    url: str | None = None
    # The HTTP API's database connections (a pool apart from the agent's).
    api_connections: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.api_connections <= 100:
            raise ConfigError(f"api_db_connections must be in [1, 100]: got {self.api_connections}")


@dataclass(frozen=True)
class PathSettings:
    """The state directory and what lives under it."""

    state: Path = dataclasses.field(default_factory=_default_state_dir)
    # Where each running attempt's monitor keeps its pid and exit record: a tmpfs such as
    # /run/scheduler in production (volatile, cheap to create and remove); None:
    # <state_dir>/run. Output and images stay in the state directory.
    runtime: Path | None = None

    def __post_init__(self) -> None:
        if self.runtime is not None and not self.runtime.is_absolute():
            raise ConfigError(f"runtime_dir must be an absolute path: got {self.runtime}")

    @property
    def runs_dir(self) -> Path:
        """Where each job attempt keeps its output (and the writable layer of its image)."""
        return self.state / "runs"

    @property
    def monitors_dir(self) -> Path:
        """Where each running attempt's monitor keeps its pid and exit record."""
        return self.runtime if self.runtime is not None else self.state / "run"

    @property
    def spool_dir(self) -> Path:
        """Where usage rows wait while the database cannot take them."""
        return self.state / "spool"

    @property
    def bin_dir(self) -> Path:
        """Where the compiled monitor lives."""
        return self.state / "bin"

    @property
    def images_dir(self) -> Path:
        """Where the node's images (read-only layer stacks) live."""
        return self.state / "images"

    @property
    def postgres_dir(self) -> Path:
        """Where the embedded Postgres keeps its data and socket."""
        return self.state / "postgres"


@dataclass(frozen=True)
class CgroupSettings:
    """The scheduler's cgroup root and what the node's kernel gives the jobs."""

    root: str = "scheduler"
    driver: CgroupDriverChoice = "auto"
    # Block devices ("MAJ:MIN", comma-separated) that io limits apply to; empty: the disk
    # holding the state directory.
    io_devices: str = ""
    # The most pids one tenant's subtree may hold on this node (0: a quarter of pid_max).
    max_pids: int = 0

    def __post_init__(self) -> None:
        _check_choices(self)
        if not 0 <= self.max_pids <= 4_194_304:
            raise ConfigError(
                f"max_pids must be in [0, 4194304] (0: pid_max / 4): got {self.max_pids}"
            )


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP API: its address, tokens and own limits (api/limits.py): open connections
    (lowered to half the descriptor limit if above it), and how long a client may take to
    send a request head, a body, or stay idle between requests."""

    addr: str = "127.0.0.1:8420"
    admin_token: str | None = None
    # When set, /metrics answers only requests bearing it (Authorization: Bearer <token>).
    metrics_token: str | None = None
    max_connections: int = 1000
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        host, sep, port = self.addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"http_addr must be HOST:PORT: got {self.addr!r}")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError(
                f"http_max_connections must be in [1, 1000000]: got {self.max_connections}"
            )
        for name, low in (
            ("header_timeout_seconds", 0.1),
            ("body_timeout_seconds", 0.1),
            ("keepalive_timeout_seconds", 1.0),
        ):
            value = getattr(self, name)
            if not low <= value <= 3600:
                raise ConfigError(f"http_{name} must be in [{low:g}, 3600] s: got {value}")
        token = self.metrics_token
        if token is not None and (
            len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token
        ):
            raise ConfigError(
                "metrics_token must be at least 16 printable ASCII characters without spaces"
                " (it is sent as 'Authorization: Bearer <token>')"
            )


@dataclass(frozen=True)
class NodeSettings:
    """This node: its name, labels, capacity for admission (0: detected from the host), and
    the lease it holds on its name, renewed every heartbeat; another agent marks the node
    down once the lease is expired by more than the grace."""

    name: str = dataclasses.field(default_factory=socket.gethostname)
    # "k=v,k2=v2" (scheduler/labels.py): jobs' constraints must be among them to run here.
    labels: str = ""
    cpu: float = 0.0
    memory_bytes: int = 0
    lease_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    lease_grace_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or len(self.name) > 253:
            raise ConfigError(f"node_name {self.name!r} is not a valid node name")
        if self.cpu < 0 or self.memory_bytes < 0:
            raise ConfigError("node_cpu and node_memory_bytes must be >= 0 (0: detect)")
        try:
            parse_list(self.labels)
        except LabelError as exc:
            raise ConfigError(f"node_labels: {exc}") from exc
        if not 0.1 <= self.heartbeat_seconds <= 3600:
            raise ConfigError(
                f"heartbeat_seconds must be in [0.1, 3600] s: got {self.heartbeat_seconds}"
            )
        if not 2 * self.heartbeat_seconds <= self.lease_seconds <= 86400:
            raise ConfigError(
                f"lease_seconds must be at least twice heartbeat_seconds"
                f" ({self.heartbeat_seconds:g}) and at most 86400: got {self.lease_seconds}"
            )
        if not 0 <= self.lease_grace_seconds <= 3600:
            raise ConfigError(
                f"lease_grace_seconds must be in [0, 3600] s: got {self.lease_grace_seconds}"
            )

    @property
    def label_set(self) -> dict[str, str]:
        """``labels`` as a dict (checked when the settings were made)."""
        return parse_list(self.labels)


@dataclass(frozen=True)
class AgentSettings:
    """The agent's loop: how many jobs at once, how often it looks, how it stops them."""

    max_running: int = 256
    # Keep the kernel's cgroup migration lock warm this long after the last sign of work, so
    # a launch does not wait for an RCU grace period (runtime/warmer.py); 0 turns it off.
    launch_warm_seconds: float = 2.0
    poll_interval: float = 2.0
    # The longest grace between SIGTERM and SIGKILL a job gets at a cancel or its time
    # limit (its own jobs.kill_grace_seconds, capped by this).
    term_grace_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ConfigError(f"max_running must be at least 1: got {self.max_running}")
        if not 0 <= self.launch_warm_seconds <= 3600:
            raise ConfigError(
                f"launch_warm_seconds must be in [0, 3600] (0: off): got {self.launch_warm_seconds}"
            )
        if not 0.05 <= self.poll_interval <= 3600:
            raise ConfigError(f"poll_interval must be in [0.05, 3600] s: got {self.poll_interval}")
        if not 0 <= self.term_grace_seconds <= 3600:
            raise ConfigError(
                f"term_grace_seconds must be in [0, 3600]: got {self.term_grace_seconds}"
            )


@dataclass(frozen=True)
class LimitSettings:
    """Bounds on what clients ask for and on the state directory's use."""

    # The most members one array submission (CLI or HTTP) may make.
    max_array_size: int = 10_000
    # Most bytes of a job's stdout and stderr (together) kept in the state directory: the
    # default and the ceiling of jobs' and tenants' output_limit_bytes. Job output also stops
    # being kept while the state directory has less than state_min_free_bytes free.
    output_limit_bytes: int = 1024 * 1024 * 1024
    # Usage rows the database cannot take wait in <state_dir>/spool, up to this many bytes;
    # below state_min_free_bytes free in the state directory no job is started.
    spool_max_bytes: int = 64 * 1024 * 1024
    state_min_free_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.max_array_size <= 1_000_000:
            raise ConfigError(f"max_array_size must be in [1, 1000000]: got {self.max_array_size}")
        if not 4096 <= self.spool_max_bytes <= 2**40:
            raise ConfigError(
                f"spool_max_bytes must be in [4 KiB, 1 TiB] (4096..{2**40}): got"
                f" {self.spool_max_bytes}"
            )
        if not 0 <= self.state_min_free_bytes <= 2**40:
            raise ConfigError(
                f"state_min_free_bytes must be in [0, 1 TiB]: got {self.state_min_free_bytes}"
            )
        if not 0 <= self.output_limit_bytes <= 2**50:
            raise ConfigError(
                f"output_limit_bytes must be in [0, 1 PiB]: got {self.output_limit_bytes}"
            )


@dataclass(frozen=True)
class AccountingSettings:
    """Sampling for billing and the per-job Prometheus series."""

    sample_interval: float = 10.0
    # The lowest sample_interval accepted. 1 s in production; tests lower it (>= 0.05 s) to
    # see several sweeps inside a short job.
    sample_interval_floor: float = 1.0
    # Per-job Prometheus series: at most this many running jobs are exported; 0 turns them off.
    metrics_jobs: int = 1000

    def __post_init__(self) -> None:
        if not 0.05 <= self.sample_interval_floor <= 1:
            raise ConfigError(
                f"sample_interval_floor must be in [0.05, 1] s: got {self.sample_interval_floor}"
            )
        if not self.sample_interval_floor <= self.sample_interval <= 3600:
            raise ConfigError(
                f"sample_interval must be in [{self.sample_interval_floor:g}, 3600] s: "
                f"got {self.sample_interval}"
            )
        if self.metrics_jobs < 0:
            raise ConfigError(
                f"metrics_jobs must be >= 0 (0 turns per-job series off): got {self.metrics_jobs}"
            )


@dataclass(frozen=True)
class LogSettings:
    """What is logged and how it looks."""

    level: LogLevel = "info"
    format: LogFormat = "console"

    def __post_init__(self) -> None:
        _check_choices(self)


@dataclass(frozen=True)
class SandboxSettings:
    """The runtime sandbox (runtime/sandbox.py): the default user of jobs, whether a job may
    ask for the host's network, when an attempt's writable image layer is kept, and tenants
    (comma-separated names) whose jobs run without the default seccomp filter."""

    run_as: str = DEFAULT_RUN_AS
    allow_network: bool = False
    keep_upper: KeepUpper = "never"
    trusted_tenants: str = ""

    def __post_init__(self) -> None:
        _check_choices(self)
        try:
            check_run_as(self.run_as)
        except SandboxError as exc:
            raise ConfigError(str(exc)) from exc
        for name in self.trusted_tenant_names:
            if not NAME.match(name):
                raise ConfigError(f"trusted_tenants: {name!r} is not a tenant name")

    @property
    def trusted_tenant_names(self) -> frozenset[str]:
        """``trusted_tenants`` as a set of names."""
        return frozenset(n.strip() for n in self.trusted_tenants.split(",") if n.strip())


@dataclass(frozen=True)
class RetentionSettings:
    """Retention (agent/retention.py), durations such as 30d or 12h, or "off": job output
    files (each attempt's directory under runs/) untouched this long are removed; finished
    job rows this old are deleted (off by default; a job with billing rows stays until its
    months are archived, docs/operations.md). Swept every interval_seconds."""

    output: str = "30d"
    jobs: str = "off"
    interval_seconds: float = 3600.0

    def __post_init__(self) -> None:
        _ = self.output_seconds, self.jobs_seconds  # checked there
        if not 0.05 <= self.interval_seconds <= 86400:
            raise ConfigError(
                "retention_interval_seconds must be in [0.05, 86400] s:"
                f" got {self.interval_seconds}"
            )

    @property
    def output_seconds(self) -> float | None:
        """``output`` in seconds (None: off)."""
        return _retention("output_retention", self.output)

    @property
    def jobs_seconds(self) -> float | None:
        """``jobs`` in seconds (None: off)."""
        return _retention("job_retention", self.jobs)


@dataclass(frozen=True)
class Settings:
    """The agent's configuration, validated, one group per concern."""

    db: DbSettings = dataclasses.field(default_factory=DbSettings)
    paths: PathSettings = dataclasses.field(default_factory=PathSettings)
    cgroups: CgroupSettings = dataclasses.field(default_factory=CgroupSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    node: NodeSettings = dataclasses.field(default_factory=NodeSettings)
    agent: AgentSettings = dataclasses.field(default_factory=AgentSettings)
    limits: LimitSettings = dataclasses.field(default_factory=LimitSettings)
    accounting: AccountingSettings = dataclasses.field(default_factory=AccountingSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    sandbox: SandboxSettings = dataclasses.field(default_factory=SandboxSettings)
    retention: RetentionSettings = dataclasses.field(default_factory=RetentionSettings)


# Each setting's flat key (environment variable SCHEDULER_<KEY>, TOML key, flag) -> its group
# and field. tests/unit/test_settings.py checks that every field has exactly one key.
KEYS: dict[str, tuple[str, str]] = {
    "database_url": ("db", "url"),
    "api_db_connections": ("db", "api_connections"),
    "state_dir": ("paths", "state"),
    "runtime_dir": ("paths", "runtime"),
    "cgroup_root": ("cgroups", "root"),
    "cgroup_driver": ("cgroups", "driver"),
    "io_devices": ("cgroups", "io_devices"),
    "max_pids": ("cgroups", "max_pids"),
    "http_addr": ("http", "addr"),
    "admin_token": ("http", "admin_token"),
    "metrics_token": ("http", "metrics_token"),
    "http_max_connections": ("http", "max_connections"),
    "http_header_timeout_seconds": ("http", "header_timeout_seconds"),
    "http_body_timeout_seconds": ("http", "body_timeout_seconds"),
    "http_keepalive_timeout_seconds": ("http", "keepalive_timeout_seconds"),
    "node_name": ("node", "name"),
    "node_labels": ("node", "labels"),
    "node_cpu": ("node", "cpu"),
    "node_memory_bytes": ("node", "memory_bytes"),
    "lease_seconds": ("node", "lease_seconds"),
    "heartbeat_seconds": ("node", "heartbeat_seconds"),
    "lease_grace_seconds": ("node", "lease_grace_seconds"),
    "max_running": ("agent", "max_running"),
    "launch_warm_seconds": ("agent", "launch_warm_seconds"),
    "poll_interval": ("agent", "poll_interval"),
    "term_grace_seconds": ("agent", "term_grace_seconds"),
    "max_array_size": ("limits", "max_array_size"),
    "output_limit_bytes": ("limits", "output_limit_bytes"),
    "spool_max_bytes": ("limits", "spool_max_bytes"),
    "state_min_free_bytes": ("limits", "state_min_free_bytes"),
    "sample_interval": ("accounting", "sample_interval"),
    "sample_interval_floor": ("accounting", "sample_interval_floor"),
    "metrics_jobs": ("accounting", "metrics_jobs"),
    "log_level": ("log", "level"),
    "log_format": ("log", "format"),
    "run_as": ("sandbox", "run_as"),
    "allow_network": ("sandbox", "allow_network"),
    "keep_upper": ("sandbox", "keep_upper"),
    "trusted_tenants": ("sandbox", "trusted_tenants"),
    "output_retention": ("retention", "output"),
    "job_retention": ("retention", "jobs"),
    "retention_interval_seconds": ("retention", "interval_seconds"),
}
# Settings' field -> its group's class.
GROUPS: dict[str, type[Any]] = typing.get_type_hints(Settings)
_KEY_OF = {(GROUPS[group], field): key for key, (group, field) in KEYS.items()}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _hints(cls: type[Any]) -> dict[str, Any]:
    """A group's field types, evaluated (annotations are text under postponed evaluation)."""
    return typing.get_type_hints(cls)


def _key_of(cls: type[Any], field: str) -> str:
    return _KEY_OF.get((cls, field), field)


def _choices(kind: Any) -> tuple[str, ...]:
    """The choices of a Literal type (possibly optional); () for any other type."""
    if get_origin(kind) is Literal:
        return tuple(str(c) for c in get_args(kind))
    return ()


def _retention(name: str, text: str) -> float | None:
    """A retention setting: "off" (or empty), else a duration of at least a second."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    try:
        seconds = parse_duration(text.strip())
    except UnitError as exc:
        raise ConfigError(f"{name}: {exc} (or off)") from exc
    if not 1 <= seconds <= 100 * 365 * 86400:
        raise ConfigError(f"{name} must be between 1s and 100 years (or off): got {text!r}")
    return float(seconds)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError(f"expected an integer, got {value!r}")


def _to_float(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        number = float(value.strip())
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    raise ValueError(f"expected a number, got {value!r}")


def _to_path(value: Any) -> Path:
    if isinstance(value, Path | str) and str(value):
        return Path(value).expanduser()
    raise ValueError(f"expected a path, got {value!r}")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


_CONVERTERS: dict[Any, Any] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    Path: _to_path,
    str: _to_str,
}


def _convert_to(kind: Any, value: Any) -> Any:
    """``value`` as the type ``kind``: chosen by the type itself, not its spelling."""
    if get_origin(kind) in (Union, types.UnionType):
        options = [k for k in get_args(kind) if k is not type(None)]
        if value is None:
            return None
        [kind] = options  # settings are at most "X | None"
    choices = _choices(kind)
    if choices:
        text = _to_str(value).strip()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"expected a {kind.__name__}, got {value!r}")
    return _CONVERTERS[kind](value)


def _convert(key: str, value: Any, source: str) -> Any:
    """Turn a raw value into the type of ``key``'s field, with an error that names the
    setting and where its value came from."""
    if key not in KEYS:
        raise ConfigError(f"unknown setting {key!r}")
    group, field = KEYS[key]
    kind = _hints(GROUPS[group])[field]
    try:
        return _convert_to(kind, value)
    except ValueError as exc:
        where = key if source == key else f"{source}: {key}"
        raise ConfigError(f"{where}: {exc}") from exc


def make_settings(**values: Any) -> Settings:
    """Settings from flat keys (``state_dir=...``, ``http_addr=...``): each value converted
    by its field's type, each group checked; the others keep their defaults."""
    return _build({key: _convert(key, value, key) for key, value in values.items()})


def _build(values: Mapping[str, Any]) -> Settings:
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for key, value in values.items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r}")
        group, field = KEYS[key]
        grouped[group][field] = value
    return Settings(**{group: GROUPS[group](**fields) for group, fields in grouped.items()})


# The systemd unit's EnvironmentFile (deploy/systemd/scheduler.service).
UNIT_ENV_FILE = Path("/etc/scheduler/scheduler.env")


def read_environment_file(path: Path) -> dict[str, str]:
    """The SCHEDULER_* assignments of a systemd EnvironmentFile: ``KEY=VALUE`` lines, ``#``
    comments, a value optionally in matching quotes. Other keys are ignored; a line that is
    no assignment is an error (the unit would not start with it either)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read environment file {path}: {exc}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.startswith("SCHEDULER_"):
            values[key] = value
    return values


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge flags over environment over file; unknown keys in the file are errors."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        section = data.get("scheduler", data)
        for key, value in section.items():
            if key not in KEYS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = _convert(key, value, str(config_file))
    for name in KEYS:
        env_name = env_var(name)
        if environ.get(env_name):
            values[name] = _convert(name, environ[env_name], env_name)
    for name, value in (flags or {}).items():
        if value is not None:
            if name not in KEYS:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return _build(values)


def env_var(key: str) -> str:
    """The environment variable of a setting's flat key."""
    return f"SCHEDULER_{key.upper()}"
