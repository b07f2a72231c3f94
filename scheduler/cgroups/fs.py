"""cgroupfs access shared by both drivers: files, directories, pids and bounded waits.

Every failure is a :class:`CgroupError` that names the path and chains the ``OSError``
(``exc.__cause__.errno`` tells callers why). Reads are one open, one or two preads and a
close; nothing here caches file descriptors yet.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from scheduler.cgroups.parse import parse_pids
from scheduler.errors import CgroupError, ProcessesSurvive

# Larger than any counter file we read (memory.stat is ~1.5 KiB, io.stat grows per device).
_READ_SIZE = 64 * 1024

# A just-killed cgroup stays "populated" until its last task passes cgroup_exit(), and
# rmdir() fails with EBUSY meanwhile (cgroup_destroy_locked checks cgroup_is_populated).
RMDIR_RETRY_SECONDS = 1.0


def _fail(action: str, path: Path | str, exc: OSError) -> CgroupError:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return CgroupError(f"cannot {action} {path}: {reason}")


def cause_errno(exc: BaseException) -> int | None:
    """The errno of the OSError chained to a CgroupError raised here, if any."""
    cause = exc.__cause__
    return cause.errno if isinstance(cause, OSError) else None


def _read(path: Path | str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, _READ_SIZE, 0)
        # seq_file reads fill the buffer until the records run out, so a full buffer is the
        # only case where more text may follow.
        if len(data) == _READ_SIZE:
            parts = [data]
            while chunk := os.pread(fd, _READ_SIZE, sum(len(p) for p in parts)):
                parts.append(chunk)
            data = b"".join(parts)
    finally:
        os.close(fd)
    return data.decode()


def read_file(path: Path | str) -> str:
    """The whole text of a cgroupfs file."""
    try:
        return _read(path)
    except OSError as exc:
        raise _fail("read", path, exc) from exc


def read_optional(path: Path | str) -> str | None:
    """Like :func:`read_file`, but None when the file does not exist (controller absent)."""
    try:
        return _read(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fail("read", path, exc) from exc


def write_file(path: Path | str, value: str) -> None:
    """Write ``value`` with a single write(2), as the kernel parses each write on its own."""
    try:
        # No O_CREAT: every interface file already exists; a missing one is an error.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


def make_dir(path: Path) -> bool:
    """Create one cgroup directory (mode 0755); False if it already existed."""
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        return False
    except OSError as exc:
        raise _fail("create", path, exc) from exc
    return True


def make_dirs(base: Path, rel: PurePosixPath) -> None:
    """Create ``base/rel`` and its missing parents below ``base``, one level at a time."""
    current = base
    for part in rel.parts:
        current = current / part
        make_dir(current)


def remove_dir(path: Path | str, *, retry_seconds: float = RMDIR_RETRY_SECONDS) -> None:
    """rmdir a cgroup; missing is fine, EBUSY is retried briefly (see RMDIR_RETRY_SECONDS)."""
    deadline = time.monotonic() + retry_seconds
    delay = 0.001
    while True:
        try:
            # Not Path(path).rmdir(): this runs for every hierarchy of every job.
            os.rmdir(path)  # noqa: PTH106
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            raise _fail("remove", path, exc) from exc
        return


def child_dirs(path: Path) -> list[str]:
    """Names of the sub-directories (child cgroups) of ``path``; empty if it is missing."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _fail("list", path, exc) from exc


def walk_deepest_first(path: Path) -> Iterator[Path]:
    """``path`` and every cgroup below it, children before their parent."""
    for name in child_dirs(path):
        yield from walk_deepest_first(path / name)
    if path.is_dir():
        yield path


def pids_below(path: Path) -> list[int]:
    """Every pid in ``path``/cgroup.procs and in its descendants (vanishing cgroups skipped)."""
    pids: list[int] = []
    for directory in walk_deepest_first(path):
        text = read_optional(directory / "cgroup.procs")
        if text:
            pids.extend(parse_pids(text))
    return pids


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` with a growing sleep (1 ms to 20 ms) until it holds or time is up."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def sigkill_all(pids: list[int]) -> None:
    """SIGKILL each pid; one that already exited is not an error."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except OSError as exc:
            raise CgroupError(f"cannot kill pid {pid}: {exc.strerror or exc}") from exc


def check_root(root: str) -> PurePosixPath:
    """Validate the scheduler's root, a relative path below every hierarchy mount.

    ``"scheduler"`` and ``"system.slice/scheduler.service"`` are fine; absolute paths,
    ``.``/``..`` and empty segments are rejected so the root can never leave the mount.
    """
    if not root:
        raise CgroupError("cgroup root is empty: expected a relative path such as 'scheduler'")
    if root.startswith("/"):
        raise CgroupError(f"cgroup root {root!r} is absolute: give it relative to the mounts")
    if "\0" in root:
        raise CgroupError(f"cgroup root {root!r} contains a NUL byte")
    segments = root.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise CgroupError(f"cgroup root {root!r} has an empty, '.' or '..' segment")
    return PurePosixPath(*segments)


def kill_until_empty(
    where: Path,
    list_pids: Callable[[], list[int]],
    *,
    freeze: Callable[[], bool],
    thaw: Callable[[], None],
    timeout: float,
) -> None:
    """SIGKILL every listed pid until none is left; the fallback when there is no cgroup.kill.

    Each round freezes first (if ``freeze`` returns True the tasks cannot fork between the
    listing and the signal, and a pid cannot be reused meanwhile), signals, then thaws: a
    task frozen by the v1 freezer only acts on SIGKILL once it leaves the refrigerator.
    """
    deadline = time.monotonic() + timeout
    can_freeze = True
    while True:
        if can_freeze:
            can_freeze = freeze()
        pids = list_pids()
        sigkill_all(pids)
        thaw()
        if not pids or wait_until(lambda: not list_pids(), 0.1):
            return
        if time.monotonic() >= deadline:
            left = list_pids()
            if not left:
                return
            raise ProcessesSurvive(
                f"{len(left)} processes in {where} survived SIGKILL for {timeout} s: {left[:10]}",
                left,
            )
