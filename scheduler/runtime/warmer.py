"""The agent's side of ``warmer.c``: keep the cgroup migration lock warm while jobs arrive.

Putting a job's first process into its cgroups (a ``cgroup.procs`` write) waits for a whole
RCU grace period when no such write happened within the last one: 5-12 ms here, on the path
between a job's claim and its first instruction. The warmer is a tiny C process in a hidden
leaf cgroup of our own (``<root>/.warmer``) that re-writes its own pid there every
``INTERVAL_US`` while the agent is busy, so job launches find the lock ready. The agent
:meth:`LockWarmer.poke` s it on every wake-up (a NOTIFY, a freed slot) and before every
launch: one non-blocking byte on a pipe. ``window`` seconds after the last poke it goes back
to sleep. See ``warmer.c`` for the kernel side and the cost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import anyio
import structlog

from scheduler.cgroups import fs
from scheduler.errors import CgroupError, LaunchError

log = structlog.get_logger(__name__)
# Below the shortest grace period seen here (about 5 ms), so the lock never goes idle while
# warm; about 330 writes/s of ~30 us each while the agent is busy.
INTERVAL_US = 3000
HELPER_NAME = "warmer"
STOP_SECONDS = 5.0
# A poke within this long of the previous one is dropped: the window (seconds) is far longer.
POKE_SECONDS = 0.05


class LockWarmer:
    """A running ``scheduler-warmer`` process and the write end of its stdin."""

    def __init__(self, process: subprocess.Popen[bytes], cgroup_dir: Path) -> None:
        self._process = process
        self._cgroup_dir = cgroup_dir
        assert process.stdin is not None
        self._fd: int | None = process.stdin.fileno()
        self._poked = -POKE_SECONDS
        os.set_blocking(self._fd, False)

    @classmethod
    async def start(cls, binary: Path, cgroup_dir: Path, *, window: float) -> LockWarmer:
        """Create ``cgroup_dir``, start the warmer in it, return once it is placed there."""
        if not 0 < window <= 3600:
            raise LaunchError(f"warm window must be in (0, 3600] s: got {window}")
        try:
            await anyio.to_thread.run_sync(lambda: cgroup_dir.mkdir(exist_ok=True))
        except OSError as exc:
            raise LaunchError(f"cannot create the warmer's cgroup {cgroup_dir}: {exc}") from exc
        argv = [
            str(binary),
            "--procs",
            str(cgroup_dir / "cgroup.procs"),
            "--interval-us",
            str(INTERVAL_US),
            "--window-ms",
            str(max(1, round(window * 1000))),
        ]
        # Started from the event loop's thread on purpose: PR_SET_PDEATHSIG follows the
        # thread that forked it, and a worker thread may end long before the agent does.
        process = subprocess.Popen(  # noqa: ASYNC220 - once, at start-up
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        # "ok" once it sits in its cgroup (its first move may wait for a grace period).
        line = b""
        with anyio.move_on_after(STOP_SECONDS):
            line = await anyio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)
        if line != b"ok\n":
            process.kill()
            stderr = await anyio.to_thread.run_sync(process.stderr.read)
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            with contextlib.suppress(CgroupError):
                await anyio.to_thread.run_sync(fs.remove_dir, cgroup_dir)
            raise LaunchError(
                f"the cgroup lock warmer did not start: {stderr.decode(errors='replace').strip()}"
            )
        process.stdout.close()
        process.stderr.close()
        log.info("lock_warmer_started", pid=process.pid, cgroup=str(cgroup_dir), window=window)
        return cls(process, cgroup_dir)

    @property
    def pid(self) -> int:
        return self._process.pid

    def poke(self) -> None:
        """Jobs are coming: stay warm for another window (never blocks).

        At most one byte per ``POKE_SECONDS``: a write wakes the warmer, and the agent wakes
        its dispatcher for every NOTIFY and every finished job.
        """
        if self._fd is None:
            return
        now = time.monotonic()
        if now - self._poked < POKE_SECONDS:
            return
        self._poked = now
        try:
            os.write(self._fd, b".")
        except BlockingIOError:
            pass  # bytes are already waiting: it is awake
        except OSError as exc:
            # It died (it never should): launches still work, at the grace period's pace.
            log.exception("lock_warmer_lost", error=str(exc), returncode=self._process.poll())
            self._fd = None

    async def aclose(self) -> None:
        """Stop the warmer (EOF on its stdin) and remove its cgroup."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        self._fd = None
        try:
            with anyio.fail_after(STOP_SECONDS):
                await anyio.to_thread.run_sync(self._process.wait, abandon_on_cancel=True)
        except TimeoutError:
            self._process.kill()
            self._process.wait()
        try:
            await anyio.to_thread.run_sync(fs.remove_dir, self._cgroup_dir)
        except CgroupError as exc:
            log.warning("lock_warmer_cgroup_left", cgroup=str(self._cgroup_dir), error=str(exc))
