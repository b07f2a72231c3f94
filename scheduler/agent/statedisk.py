"""Watches the filesystems of the state directory (every attempt's output, the usage spool)
and of the monitors' directory (each running attempt's monitor pid and exit record), which
is a tmpfs in production and the state directory's ``run`` by default.

A job cannot be started safely on a full disk, so while the free space is below
``state_min_free_bytes``, or a small write fails (ENOSPC, EDQUOT, a read-only remount), the
``state_disk`` condition holds: the dispatcher claims nothing and /readyz says why. Running
jobs are not affected: their monitors reserved their exit records' space when they started.
The condition ends by itself once a check passes again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import structlog

from scheduler.agent.health import Condition, Health

log = structlog.get_logger(__name__)
PROBE_NAME = ".write-probe"
PROBE_BYTES = 4096
# How a reason caused by the descriptor table, not the disk, begins.
OUT_OF_DESCRIPTORS = "out of file descriptors (not a disk problem)"


def check_state_disk(state_dir: Path, min_free_bytes: int) -> str | None:
    """Why the state directory cannot take new jobs now, or None (blocking: a worker thread)."""
    try:
        st = os.statvfs(state_dir)
    except OSError as exc:
        return f"state directory {state_dir} cannot be checked: {exc}"
    free = st.f_bavail * st.f_frsize
    if free < min_free_bytes:
        return (
            f"state directory full: {free} bytes free on {state_dir}, below"
            f" state_min_free_bytes ({min_free_bytes})"
        )
    probe = state_dir / PROBE_NAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            # Not the disk: the agent (or the host) is out of file descriptors.
            return f"{OUT_OF_DESCRIPTORS}: opening {probe}: {exc}"
        return f"state directory full or not writable: writing {probe}: {exc}"
    finally:
        probe.unlink(missing_ok=True)
    return None


def check_state_disks(dirs: tuple[Path, ...], min_free_bytes: int) -> str | None:
    """The first reason one of ``dirs`` cannot take new jobs now, or None (blocking). Each
    filesystem is checked once (the runtime directory is inside the state directory by
    default)."""
    seen: set[int] = set()
    for directory in dirs:
        try:
            device = directory.stat().st_dev
        except OSError:
            device = None  # check_state_disk says why
        if device in seen:
            continue
        if device is not None:
            seen.add(device)
        reason = check_state_disk(directory, min_free_bytes)
        if reason is not None:
            return reason
    return None


class StateDisk:
    """Checks the state directories every ``interval`` seconds; ``on_ok`` runs when they
    are usable again (the dispatcher claims at once)."""

    def __init__(
        self,
        state_dirs: tuple[Path, ...],
        *,
        min_free_bytes: int,
        interval: float,
        health: Health,
        on_ok: Callable[[], None] | None = None,
    ) -> None:
        self._state_dirs = state_dirs
        self._min_free = min_free_bytes
        self._interval = interval
        self._health = health
        self._on_ok = on_ok

    def blocked(self) -> str | None:
        """Why no job may be started now (None: go ahead)."""
        return self._health.reason("state_disk") or self._health.reason("descriptors")

    async def check(self) -> str | None:
        """Check now and update the conditions; the reason, if any. A full descriptor table
        also stops launches (a launch opens files) but is its own condition: the disk is fine."""
        reason = await anyio.to_thread.run_sync(check_state_disks, self._state_dirs, self._min_free)
        failing: Condition | None = None
        if reason is not None:
            failing = "descriptors" if reason.startswith(OUT_OF_DESCRIPTORS) else "state_disk"
            self._health.fail(failing, reason)
        was_blocked = self.blocked() is not None
        for condition in ("state_disk", "descriptors"):
            if condition != failing:
                self._health.ok(condition)
        if reason is None and was_blocked and self._on_ok is not None:
            self._on_ok()
        return reason

    async def run(self) -> None:
        while True:
            await self.check()
            await anyio.sleep(self._interval)
