"""The agent's side of the C monitor: build it, start it, wait for it, read its record.

One monitor process runs per job attempt (see ``monitor/monitor.h``). The agent only
``posix_spawn``s it, waits on a pidfd without blocking the event loop, and then reads the
exit record the monitor wrote atomically to ``<run_dir>/exit``. The job's output goes to
``<output_dir>/stdout`` and ``stderr``, each made on the job's first byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import tempfile
import uuid
from importlib.resources.abc import Traversable
from pathlib import Path

import anyio

from scheduler.errors import LaunchError
from scheduler.runtime.spec import ExitKind, ExitRecord, LaunchSpec

# The monitor's sources: every .c and .h file of this package directory, built into one binary.
MONITOR_SOURCE = "monitor"
WARMER_SOURCE = "warmer.c"
EXIT_FILE = "exit"
# Where the monitor reserves its exit record; its first line names the monitor's pid.
RESERVE_FILE = "exit.reserve"

_CFLAGS = ("-std=gnu11", "-O2", "-Wall")
# Static when the C library allows it: no dynamic loader at every job's start (it saves
# about a third of a millisecond of CPU per launch); dynamic otherwise.
_LINKS = (("-static",), ())
_KINDS: dict[str, ExitKind] = {
    "exited": "exited",
    "signaled": "signaled",
    "start_error": "start_error",
}
_COUNTER_PREFIX = "counter."
_RECORD_KEYS = (
    "kind",
    "exit_code",
    "signal",
    "error",
    "start_ns",
    "end_ns",
    "utime_us",
    "stime_us",
    "maxrss_kb",
)


def _find_compiler() -> str:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    for name in (*names, "cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    raise LaunchError(
        "no C compiler found (tried $CC, cc, gcc, clang): install one (e.g. gcc) "
        "to build the job monitor"
    )


def monitor_binary(cache_dir: Path) -> Path:
    """Return the compiled job monitor (the sources in ``monitor/``) in ``cache_dir``."""
    return c_binary(cache_dir, MONITOR_SOURCE, "scheduler-monitor")


def warmer_binary(cache_dir: Path) -> Path:
    """Return the compiled cgroup lock warmer (``warmer.c``) in ``cache_dir``."""
    return c_binary(cache_dir, WARMER_SOURCE, "scheduler-warmer")


def _sources(resource: Traversable) -> list[Traversable]:
    """The C files ``resource`` names: itself, or a directory's .c and .h files by name."""
    if not resource.is_dir():
        return [resource]
    return sorted(
        (f for f in resource.iterdir() if f.is_file() and f.name.endswith((".c", ".h"))),
        key=lambda f: f.name,
    )


def c_binary(cache_dir: Path, source_name: str, prefix: str) -> Path:
    """Return ``prefix-<hash>`` in ``cache_dir``, compiling the package's ``source_name``.

    ``source_name`` is one C file, or a directory whose .c files are compiled together
    (with its .h files) into one binary. The binary is named after the sources' hash
    (names and contents), so a changed source gets a new binary and concurrent agents
    never see a half-written file (compile to a temporary name, then rename).
    """
    resource = importlib.resources.files(__package__ or "scheduler.runtime") / source_name
    digest = hashlib.sha256()
    texts: dict[str, bytes] = {}
    try:
        for source in _sources(resource):
            texts[source.name] = source.read_bytes()
            digest.update(f"{source.name}\0{len(texts[source.name])}\0".encode())
            digest.update(texts[source.name])
    except OSError as exc:
        raise LaunchError(f"cannot read the source {resource}: {exc}") from exc
    if not any(name.endswith(".c") for name in texts):
        raise LaunchError(f"no C source in {resource}")
    target = cache_dir / f"{prefix}-{digest.hexdigest()[:12]}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    compiler = _find_compiler()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create the binary cache {cache_dir}: {exc}") from exc
    tmp = cache_dir / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        # The sources as files of their own (the package may live in a zip): compiled
        # there, so the compiler's messages name them as the package does.
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-src-") as src_dir:
            units = []
            for name, text in texts.items():
                (Path(src_dir) / name).write_bytes(text)
                if name.endswith(".c"):
                    units.append(name)
            for link in _LINKS:
                result = subprocess.run(
                    [compiler, *_CFLAGS, *link, "-o", str(tmp.absolute()), *units],
                    cwd=src_dir,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode == 0:
                    break
        if result.returncode != 0:
            raise LaunchError(
                f"compiling {source_name} failed ({compiler} exited with "
                f"{result.returncode}):\n{result.stderr.strip()}"
            )
        tmp.replace(target)
    except OSError as exc:
        raise LaunchError(f"compiling {source_name} with {compiler} failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def _check_text(what: str, value: str) -> str:
    if "\0" in value:
        raise LaunchError(f"{what} contains a NUL byte: {value!r}")
    return value


def output_args(spec: LaunchSpec) -> list[str]:
    """The monitor's output policy flags for ``spec`` (none when it has no policy)."""
    out: list[str] = []
    for flag, value in (
        ("--output-limit", spec.output_limit_bytes),
        ("--output-bps", spec.output_bps),
        ("--output-reserve", spec.output_reserve_bytes),
    ):
        if value is not None:
            if value < 0:
                raise LaunchError(f"job {spec.job_id}: {flag} must not be negative: {value}")
            out += [flag, str(value)]
    return out


def monitor_argv(binary: Path, spec: LaunchSpec) -> list[str]:
    """The monitor's command line for ``spec`` (pure)."""
    if not spec.argv:
        raise LaunchError(f"job {spec.job_id}: empty command")
    if spec.tmp_size_bytes <= 0:
        raise LaunchError(f"job {spec.job_id}: tmp size must be positive")
    # Early (after the run dir, where a start error goes): a start error in a later flag
    # still carries whose record it is.
    identity = ["--identity", spec.identity] if spec.identity is not None else []
    argv = [
        str(binary),
        "--run-dir",
        str(spec.run_dir),
        *identity,
        "--hostname",
        spec.hostname,
        "--cwd",
        spec.cwd,
        "--tmp-size",
        str(spec.tmp_size_bytes),
    ]
    if spec.output_dir is not None:
        argv += ["--output-dir", str(spec.output_dir)]
    for path in spec.plan.mkdirs:
        argv += ["--mkdir", path]
    for path, value in spec.plan.writes:
        argv += ["--write", path, value]
    for path in spec.plan.procs:
        argv += ["--procs", path]
    argv += sandbox_args(spec)
    if spec.final_read is not None:
        for name, path in spec.final_read.counters:
            argv += ["--counter", name, path]
        for name, path in spec.final_read.gauges:
            argv += ["--gauge", name, path]
        argv += ["--empty-check", spec.final_read.empty_check]
    argv += output_args(spec)
    argv += ["--", *spec.argv]
    if "\0" in "".join(argv):  # one scan for the usual case; then find which
        for a in argv:
            _check_text("argument", a)
    return argv


def _overlay_path(job_id: int, path: Path) -> str:
    text = str(path)
    # overlayfs splits its mount options on ',' and lowerdir on ':'.
    if not path.is_absolute() or any(c in text for c in ",:\\"):
        raise LaunchError(f"job {job_id}: {text!r} cannot be an overlay layer path")
    return text


def sandbox_args(spec: LaunchSpec) -> list[str]:
    """The monitor flags for the job's user, network and root filesystem (pure)."""
    args: list[str] = []
    if spec.credentials is not None:
        if spec.credentials.uid == 0:
            raise LaunchError(f"job {spec.job_id}: jobs never run as uid 0")
        args += ["--uid", str(spec.credentials.uid), "--gid", str(spec.credentials.gid)]
    if spec.host_network:
        args.append("--host-net")
    if not spec.seccomp:
        args.append("--no-seccomp")
    for name, directory in spec.cgroup_view:
        args += ["--cgroup-view", name, directory]
    for name in spec.cgroup_hide:
        args += ["--cgroup-hide", name]
    if bool(spec.layers) != (spec.rootfs_dir is not None):
        raise LaunchError(f"job {spec.job_id}: an image needs both layers and a rootfs dir")
    if spec.rootfs_dir is not None:
        args += ["--overlay-dir", _overlay_path(spec.job_id, spec.rootfs_dir)]
        for layer in spec.layers:
            args += ["--lower", _overlay_path(spec.job_id, layer)]
    return args


def prepare(binary: Path, spec: LaunchSpec) -> list[str]:
    """Check ``spec``, make its run directory and return the monitor's argv (blocking).

    The run directory is created (mode 0750); the output directory only for a job on an
    image (its writable layer lives there), otherwise the monitor makes it when the job
    first writes.
    """
    argv = monitor_argv(binary, spec)
    for key, value in spec.env.items():
        if not key or "=" in key:
            raise LaunchError(f"job {spec.job_id}: invalid environment variable name {key!r}")
        if "\0" in key or "\0" in value:
            _check_text("environment variable", key)
            _check_text(f"environment variable {key}", value)
    try:
        # Mode 0750, or less by the umask: only root reads it.
        spec.run_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        if spec.rootfs_dir is not None:
            spec.rootfs_dir.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create run directory {spec.run_dir}: {exc}") from exc
    return argv


def spawn(binary: Path, spec: LaunchSpec) -> int:
    """Start the monitor for ``spec`` with ``posix_spawn`` and return its pid (the caller
    must wait for it). The monitor's own stdin, stdout and stderr are /dev/null."""
    argv = prepare(binary, spec)
    devnull = os.devnull
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, devnull, os.O_WRONLY, 0),
    ]
    try:
        return os.posix_spawn(str(binary), argv, spec.env, file_actions=file_actions)
    except OSError as exc:
        raise LaunchError(f"cannot start the job monitor {binary}: {exc}") from exc


def _int_field(key: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise LaunchError(f"bad exit record: {key}={value!r} is not a non-negative integer")
    return int(value)


def _optional_int_field(key: str, value: str) -> int | None:
    return None if value == "" else _int_field(key, value)


def parse_exit_record(text: str) -> ExitRecord:
    """Parse the ``key=value`` lines the monitor writes; raise LaunchError on garbage."""
    fields: dict[str, str] = {}
    counters: dict[str, str] | None = None
    # Only "\n" ends a line: str.splitlines() would also split inside an error message at
    # characters such as U+0085 or U+2028 that a job's argv may contain.
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LaunchError(f"bad exit record: line {line!r} has no '='")
        if key.startswith(_COUNTER_PREFIX):
            # A counter file's text, its newlines written as '|' (see monitor/exitrecord.c).
            counters = {} if counters is None else counters
            name = key[len(_COUNTER_PREFIX) :]
            if name in counters:
                raise LaunchError(f"bad exit record: duplicate key {key!r}")
            counters[name] = value.replace("|", "\n")
            continue
        if key in fields:
            raise LaunchError(f"bad exit record: duplicate key {key!r}")
        fields[key] = value
    missing = [key for key in _RECORD_KEYS if key not in fields]
    if missing:
        raise LaunchError(f"bad exit record: missing {', '.join(missing)}")
    kind = _KINDS.get(fields["kind"])
    if kind is None:
        raise LaunchError(f"bad exit record: unknown kind {fields['kind']!r}")
    exit_code = _optional_int_field("exit_code", fields["exit_code"])
    signal = _optional_int_field("signal", fields["signal"])
    if kind == "exited" and (exit_code is None or exit_code > 255 or signal is not None):
        raise LaunchError("bad exit record: kind=exited needs exit_code 0..255 and no signal")
    if kind == "signaled" and (signal is None or signal == 0 or exit_code is not None):
        raise LaunchError("bad exit record: kind=signaled needs a signal and no exit_code")
    if kind == "start_error" and (exit_code is not None or signal is not None):
        raise LaunchError("bad exit record: kind=start_error has no exit_code or signal")
    return ExitRecord(
        kind=kind,
        exit_code=exit_code,
        signal=signal,
        error=fields["error"] or None,
        start_ns=_int_field("start_ns", fields["start_ns"]),
        end_ns=_int_field("end_ns", fields["end_ns"]),
        utime_us=_int_field("utime_us", fields["utime_us"]),
        stime_us=_int_field("stime_us", fields["stime_us"]),
        maxrss_kb=_int_field("maxrss_kb", fields["maxrss_kb"]),
        counters=counters,
        # Absent from records of earlier versions (and of launches that gave none).
        identity=fields.get("identity") or None,
    )


def read_exit_record(run_dir: Path) -> ExitRecord | None:
    """The exit record in ``run_dir``, or None if the monitor has not written one."""
    path = f"{run_dir}/{EXIT_FILE}"  # read for every attempt's end: no pathlib, no io stack
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from exc
    try:
        # The record fits its 4 KiB reservation; read on to EOF all the same.
        chunks = [os.read(fd, 8192)]
        while chunks[-1]:
            chunks.append(os.read(fd, 8192))
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from exc
    finally:
        os.close(fd)
    return parse_exit_record(b"".join(chunks).decode("utf-8", errors="replace"))


def remove_run_dir(run_dir: Path) -> None:
    """Remove an attempt's directory (missing is fine)."""
    # A monitor's directory holds its record alone: two syscalls instead of a tree walk.
    (run_dir / EXIT_FILE).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(run_dir)


def _reap(pid: int, options: int) -> bool:
    """Reap ``pid`` if it is our exited child; True unless it is our child still running."""
    try:
        reaped, _ = os.waitpid(pid, options)
    except ChildProcessError:
        return True  # not our child (e.g. adopted after an agent restart) or already reaped
    return reaped != 0


async def wait_monitor(pid: int, pidfd: int | None = None) -> None:
    """Wait until process ``pid`` is gone, without blocking the event loop.

    Without ``pidfd``, ``pid`` is looked up now and reaped if it is our child (a monitor
    ``posix_spawn``ed by us, or one adopted after a restart). With it (a monitor the fork
    server made: not our child; the caller keeps and closes the pidfd), only the pidfd is
    waited on, so a recycled pid cannot be mistaken for the monitor.
    """
    if pidfd is not None:
        await anyio.wait_readable(pidfd)
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1  # already gone (possibly a zombie of ours: still reap it below)
    if fd >= 0:
        try:
            await anyio.wait_readable(fd)
        finally:
            os.close(fd)
    # The pidfd turns readable once the process has exited, when a child of ours is a
    # reapable zombie, so WNOHANG succeeds; the blocking fallback runs off the loop anyway.
    if not _reap(pid, os.WNOHANG):
        await anyio.to_thread.run_sync(_reap, pid, 0)
