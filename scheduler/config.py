"""Settings: command-line flags, then SCHEDULER_* environment variables, then a TOML file.

Every setting is a field of :class:`Settings`; its environment variable is the upper-cased
field name with the SCHEDULER_ prefix, and its TOML key is the field name.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.errors import ConfigError, SandboxError
from scheduler.labels import LabelError, parse_list
from scheduler.names import NAME
from scheduler.runtime.sandbox import SandboxPolicy
from scheduler.units import UnitError, parse_duration


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/scheduler")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "scheduler"


@dataclass(frozen=True)
class Settings:
    """The agent's configuration, validated."""

    database_url: str | None = None
    state_dir: Path = dataclasses.field(default_factory=_default_state_dir)
    # Where each running attempt's monitor keeps its pid and exit record: a tmpfs such as
    # /run/scheduler in production (volatile, cheap to create and remove); None:
    # <state_dir>/run. Output and images stay in the state directory.
    runtime_dir: Path | None = None
    cgroup_root: str = "scheduler"
    cgroup_driver: str = "auto"
    http_addr: str = "127.0.0.1:8420"
    node_name: str = dataclasses.field(default_factory=socket.gethostname)
    admin_token: str | None = None
    max_running: int = 256
    # Keep the kernel's cgroup migration lock warm this long after the last sign of work, so
    # a launch does not wait for an RCU grace period (runtime/warmer.py); 0 turns it off.
    launch_warm_seconds: float = 2.0
    poll_interval: float = 2.0
    sample_interval: float = 10.0
    # The lowest sample_interval accepted. 1 s in production; tests lower it (>= 0.05 s) to
    # see several sweeps inside a short job.
    sample_interval_floor: float = 1.0
    # Per-job Prometheus series: at most this many running jobs are exported; 0 turns them off.
    metrics_jobs: int = 1000
    log_level: str = "info"
    log_format: str = "console"
    # Runtime sandbox (see runtime/sandbox.py): the default user of jobs, whether a job may
    # ask for the host's network, and when an attempt's writable image layer is kept.
    run_as: str = "nobody"
    allow_network: bool = False
    keep_upper: str = "never"
    # Tenant isolation (docs/operations.md): tenants (comma-separated names) whose jobs run
    # without the default seccomp filter, and the most pids one tenant's subtree may hold on
    # this node (0: a quarter of the kernel's pid_max).
    trusted_tenants: str = ""
    max_pids: int = 0
    # Control and policy: the longest grace between SIGTERM and SIGKILL a job gets at a
    # cancel or its time limit (its own jobs.kill_grace_seconds, capped by this), and this
    # node's capacity for admission (0: detected from the host).
    term_grace_seconds: float = 600.0
    node_cpu: float = 0.0
    node_memory_bytes: int = 0
    # This node's labels, "k=v,k2=v2" (scheduler/labels.py): jobs' constraints must be among
    # them for the job to run here.
    node_labels: str = ""
    # The most members one array submission (CLI or HTTP) may make.
    max_array_size: int = 10_000
    # Block devices ("MAJ:MIN", comma-separated) that io limits apply to; empty: the disk
    # holding the state directory.
    io_devices: str = ""
    # Nodes: the lease this agent holds on its node name, renewed every heartbeat; another
    # agent marks the node down once the lease is expired by more than the grace.
    lease_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    lease_grace_seconds: float = 5.0
    # Resilience: usage rows the database cannot take wait in <state_dir>/spool, up to this
    # many bytes; below this much free space in the state directory no job is started.
    spool_max_bytes: int = 64 * 1024 * 1024
    state_min_free_bytes: int = 16 * 1024 * 1024
    # The HTTP API's own limits (api/limits.py): its database connections (a pool apart from
    # the agent's), open connections (lowered to half the descriptor limit if above it), and
    # how long a client may take to send a request head, a body, or stay idle between requests.
    api_db_connections: int = 4
    http_max_connections: int = 1000
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0
    http_keepalive_timeout_seconds: float = 5.0
    # When set, /metrics answers only requests bearing it (Authorization: Bearer <token>).
    metrics_token: str | None = None
    # Most bytes of a job's stdout and stderr (together) kept in the state directory: the
    # default and the ceiling of jobs' and tenants' output_limit_bytes. Job output also stops
    # being kept while the state directory has less than state_min_free_bytes free.
    output_limit_bytes: int = 1024 * 1024 * 1024
    # Retention (agent/retention.py), durations such as 30d or 12h, or "off": job output
    # files (each attempt's directory under runs/) untouched this long are removed; finished
    # job rows this old are deleted (off by default; a job with billing rows stays until its
    # months are archived, docs/operations.md). Swept every retention_interval_seconds.
    output_retention: str = "30d"
    job_retention: str = "off"
    retention_interval_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.cgroup_driver not in ("auto", "v1", "v2"):
            raise ConfigError(f"cgroup_driver must be auto, v1 or v2: got {self.cgroup_driver!r}")
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
        if self.node_cpu < 0 or self.node_memory_bytes < 0:
            raise ConfigError("node_cpu and node_memory_bytes must be >= 0 (0: detect)")
        try:
            parse_list(self.node_labels)
        except LabelError as exc:
            raise ConfigError(f"node_labels: {exc}") from exc
        if not 1 <= self.max_array_size <= 1_000_000:
            raise ConfigError(f"max_array_size must be in [1, 1000000]: got {self.max_array_size}")
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
        if self.log_format not in ("console", "json"):
            raise ConfigError(f"log_format must be console or json: got {self.log_format!r}")
        host, sep, port = self.http_addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"http_addr must be HOST:PORT: got {self.http_addr!r}")
        if not self.node_name or "/" in self.node_name or len(self.node_name) > 253:
            raise ConfigError(f"node_name {self.node_name!r} is not a valid node name")
        _check_lease(self)
        if not 0 <= self.max_pids <= 4_194_304:
            raise ConfigError(
                f"max_pids must be in [0, 4194304] (0: pid_max / 4): got {self.max_pids}"
            )
        for name in self.trusted_tenant_names:
            if not NAME.match(name):
                raise ConfigError(f"trusted_tenants: {name!r} is not a tenant name")
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
        _ = self.output_retention_seconds, self.job_retention_seconds  # checked there
        if not 0.05 <= self.retention_interval_seconds <= 86400:
            raise ConfigError(
                "retention_interval_seconds must be in [0.05, 86400] s:"
                f" got {self.retention_interval_seconds}"
            )
        if self.runtime_dir is not None and not self.runtime_dir.is_absolute():
            raise ConfigError(f"runtime_dir must be an absolute path: got {self.runtime_dir}")
        _check_runtime(self)
        _check_http(self)

    @property
    def node_label_set(self) -> dict[str, str]:
        """``node_labels`` as a dict (checked when the settings were made)."""
        return parse_list(self.node_labels)

    @property
    def trusted_tenant_names(self) -> frozenset[str]:
        """``trusted_tenants`` as a set of names."""
        return frozenset(n.strip() for n in self.trusted_tenants.split(",") if n.strip())

    @property
    def output_retention_seconds(self) -> float | None:
        """``output_retention`` in seconds (None: off)."""
        return _retention("output_retention", self.output_retention)

    @property
    def job_retention_seconds(self) -> float | None:
        """``job_retention`` in seconds (None: off)."""
        return _retention("job_retention", self.job_retention)

    @property
    def runs_dir(self) -> Path:
        """Where each job attempt keeps its output (and the writable layer of its image)."""
        return self.state_dir / "runs"

    @property
    def monitors_dir(self) -> Path:
        """Where each running attempt's monitor keeps its pid and exit record."""
        return self.runtime_dir if self.runtime_dir is not None else self.state_dir / "run"

    @property
    def spool_dir(self) -> Path:
        """Where usage rows wait while the database cannot take them."""
        return self.state_dir / "spool"

    @property
    def bin_dir(self) -> Path:
        """Where the compiled monitor lives."""
        return self.state_dir / "bin"

    @property
    def images_dir(self) -> Path:
        """Where the node's images (read-only layer stacks) live."""
        return self.state_dir / "images"

    @property
    def postgres_dir(self) -> Path:
        """Where the embedded Postgres keeps its data and socket."""
        return self.state_dir / "postgres"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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


def _check_lease(settings: Settings) -> None:
    if not 0.1 <= settings.heartbeat_seconds <= 3600:
        raise ConfigError(
            f"heartbeat_seconds must be in [0.1, 3600] s: got {settings.heartbeat_seconds}"
        )
    if not 2 * settings.heartbeat_seconds <= settings.lease_seconds <= 86400:
        raise ConfigError(
            f"lease_seconds must be at least twice heartbeat_seconds"
            f" ({settings.heartbeat_seconds:g}) and at most 86400: got {settings.lease_seconds}"
        )
    if not 0 <= settings.lease_grace_seconds <= 3600:
        raise ConfigError(
            f"lease_grace_seconds must be in [0, 3600] s: got {settings.lease_grace_seconds}"
        )


def _check_http(settings: Settings) -> None:
    if not 1 <= settings.api_db_connections <= 100:
        raise ConfigError(
            f"api_db_connections must be in [1, 100]: got {settings.api_db_connections}"
        )
    if not 1 <= settings.http_max_connections <= 1_000_000:
        raise ConfigError(
            f"http_max_connections must be in [1, 1000000]: got {settings.http_max_connections}"
        )
    for name, low in (
        ("http_header_timeout_seconds", 0.1),
        ("http_body_timeout_seconds", 0.1),
        ("http_keepalive_timeout_seconds", 1.0),
    ):
        value = getattr(settings, name)
        if not low <= value <= 3600:
            raise ConfigError(f"{name} must be in [{low:g}, 3600] s: got {value}")
    token = settings.metrics_token
    if token is not None and (
        len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token
    ):
        raise ConfigError(
            "metrics_token must be at least 16 printable ASCII characters without spaces"
            " (it is sent as 'Authorization: Bearer <token>')"
        )


def _check_runtime(settings: Settings) -> None:
    try:
        SandboxPolicy(settings.run_as, settings.allow_network, settings.keep_upper)  # type: ignore[arg-type]
    except SandboxError as exc:
        raise ConfigError(str(exc)) from exc


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {value!r}")


def _convert(name: str, value: Any, source: str) -> Any:
    """Turn a raw value into the field's type, with an error that names where it came from."""
    kind = _FIELDS[name].type
    converters: dict[str, Any] = {
        "int": int,
        "float": float,
        "Path": lambda v: Path(str(v)).expanduser(),
        "Path | None": lambda v: Path(str(v)).expanduser(),
        "bool": _to_bool,
    }
    if (isinstance(value, bool) and kind != "bool") or (
        kind not in converters and not isinstance(value, str)
    ):
        raise ConfigError(f"{source}: {name}: expected a {kind}, got {value!r}")
    try:
        return converters[kind](value) if kind in converters else value
    except ValueError as exc:
        raise ConfigError(f"{source}: {name}: {exc}") from exc


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
            if key not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = _convert(key, value, str(config_file))
    for name in _FIELDS:
        env_name = f"SCHEDULER_{name.upper()}"
        if environ.get(env_name):
            values[name] = _convert(name, environ[env_name], env_name)
    for name, value in (flags or {}).items():
        if value is not None:
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values)
