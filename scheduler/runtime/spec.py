"""Values that cross the boundary between the agent and the C monitor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scheduler import launchplan
from scheduler.launchplan import LaunchPlan

ExitKind = Literal["exited", "signaled", "start_error"]
# Defined beside LaunchPlan (what cgroups makes and runtime carries); kept importable from
# here, where it was defined before.
FinalRead = launchplan.FinalRead


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the monitor needs to start one attempt of one job."""

    job_id: int
    attempt: int
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    hostname: str
    # The monitor's own directory (on a tmpfs in production): its pid and the exit record.
    run_dir: Path
    plan: LaunchPlan
    # Where stdout and stderr go, each file made on the job's first byte (None: run_dir).
    output_dir: Path | None = None
    # Size of the private /tmp (tmpfs, charged to the job's memory cgroup).
    tmp_size_bytes: int = 64 * 1024 * 1024
    # Who the job runs as; None keeps root (only the monitor's own tests do that).
    credentials: Credentials | None = None
    # Stay in the host's network namespace (the job asked and the operator allows it).
    host_network: bool = False
    # The image's read-only layers, top first; empty runs on the host's root.
    layers: tuple[Path, ...] = ()
    # Where the attempt's writable layer, overlay work dir and mount point go.
    rootfs_dir: Path | None = None
    # The cgroup files the monitor reads once the job has ended (None: the agent reads them).
    final_read: FinalRead | None = None
    # Whose attempt this is (runtime/records.py), written into its records by the monitor.
    identity: str | None = None
    # The output policy (runtime/output.py): most job bytes kept of stdout and stderr, their
    # rate to disk (the job's io_write_bps), and the free space the output disk keeps.
    output_limit_bytes: int | None = None
    output_bps: int | None = None
    output_reserve_bytes: int | None = None
    # The job's /sys/fs/cgroup (see runtime/cgroupview.py): (mount point name under it, the
    # job's cgroup directory) to bind, and the names of other cgroup mounts to detach;
    # empty: the host's view is left.
    cgroup_view: tuple[tuple[str, str], ...] = ()
    cgroup_hide: tuple[str, ...] = ()
    # The default seccomp filter applies (False only for the node's trusted tenants).
    seccomp: bool = True


@dataclass(frozen=True)
class Credentials:
    """The unprivileged user and group a job runs as."""

    uid: int
    gid: int


@dataclass(frozen=True)
class ExitRecord:
    """What the monitor wrote atomically to ``<run_dir>/exit`` when the job ended.

    ``start_ns``/``end_ns`` are CLOCK_REALTIME nanoseconds: when the job's exec succeeded
    (or failed) and when its first process was reaped.
    """

    kind: ExitKind
    exit_code: int | None
    signal: int | None
    error: str | None
    start_ns: int
    end_ns: int
    utime_us: int
    stime_us: int
    maxrss_kb: int
    # The final counter files' texts by logical name, read by the monitor once the cgroup
    # was empty; None when it did not read them (the agent then reads the cgroup itself).
    counters: dict[str, str] | None = None
    # The identity of the attempt that wrote it (runtime/records.py); None in records of
    # earlier versions.
    identity: str | None = None
