"""The fork server: one running monitor process that forks a monitor for every launch.

Exec'ing the static monitor costs about 0.45 ms of CPU per launch; forking the small,
already running server about 0.13 ms (bench/launch.py shows the difference end to end). The
agent starts one server (``scheduler-monitor --fork-server``, see monitor/forkserver.c) on a
socket pair and sends it each launch's argv and environment; the server forks, the child
becomes the monitor exactly as an exec'd one would, and the answer carries the child's pid
and a pidfd for it. The monitors are the server's children, not the agent's: the server
reaps them, and the agent waits on the pidfd (never on a pid that could have been reused).

If the server is gone, the launch starts a new one and sends its request again, unless the
request was delivered and only the answer is missing: the server may have forked before it
died, so the launch raises UnansweredLaunch and the runner looks for that monitor in the
attempt's run directory instead of starting another (an attempt must never start twice).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
from pathlib import Path

import anyio
import structlog

from scheduler import failpoints
from scheduler.errors import LaunchError
from scheduler.runtime.launcher import prepare
from scheduler.runtime.spec import LaunchSpec

log = structlog.get_logger(__name__)


class UnansweredLaunch(LaunchError):
    """The request reached the server, which died before answering: it may have forked the
    monitor, which then runs without the agent knowing its pid (runner.py looks for it)."""


_ANSWER = struct.Struct("=i")
_LENGTH = struct.Struct("=I")
# Room for the one pidfd the answer carries.
_ANCILLARY_SIZE = socket.CMSG_SPACE(_ANSWER.size)
# The server refuses longer requests (monitor/forkserver.c: REQUEST_MAX).
REQUEST_MAX = 16 << 20


def encode_request(argv: list[str], env: dict[str, str]) -> bytes:
    """A request as the server reads it: length, argc, argv, KEY=VALUE (pure)."""
    # Joined as text and encoded once (os.fsencode encodes character by character, so this
    # is the same bytes as encoding each string): about half the cost.
    fields = [str(len(argv)), *argv, *[f"{key}={value}" for key, value in env.items()], ""]
    payload = os.fsencode("\0".join(fields))
    if len(payload) > REQUEST_MAX:
        raise LaunchError(f"the job's command and environment exceed {REQUEST_MAX} bytes")
    return _LENGTH.pack(len(payload)) + payload


class ForkServer:
    """A running ``scheduler-monitor --fork-server`` and the agent's end of its socket."""

    def __init__(self, binary: Path) -> None:
        self._binary = binary
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        # fast_acquire: a free lock is taken without a yield to the event loop (one loop
        # iteration per launch); cancellation is checked all the same.
        self._lock = anyio.Lock(fast_acquire=True)

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self) -> None:
        """Start the server process (blocking; a few milliseconds)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        devnull = os.devnull
        env = (
            {"SCHEDULER_FORK_SERVER_FAILPOINT": "unanswered"}
            if failpoints.take("fork_server_unanswered")
            else {}
        )
        try:
            self._pid = os.posix_spawn(
                str(self._binary),
                [str(self._binary), "--fork-server"],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                    (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, devnull, os.O_WRONLY, 0),
                ],
            )
        except OSError as exc:
            ours.close()
            raise LaunchError(f"cannot start the fork server {self._binary}: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        log.info("fork_server_started", pid=self._pid)

    async def launch(self, spec: LaunchSpec) -> tuple[int, int]:
        """Start the monitor for ``spec``; its pid and a pidfd for it (the caller closes it)."""
        request = encode_request(prepare(self._binary, spec), spec.env)
        # Shielded: a cancelled launch must not leave its answer for the next one to read.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                value, pidfd = await self._request(request)
        if value < 0:
            raise LaunchError(f"the fork server could not fork: {os.strerror(-value)}")
        if pidfd < 0:
            raise LaunchError(f"the fork server sent no pidfd for pid {value}")
        return value, pidfd

    async def _request(self, request: bytes) -> tuple[int, int]:
        try:
            await self._deliver(request)
        except OSError as exc:
            # Not delivered whole: the server cannot have forked for it. Once more with a
            # new server.
            self._lost(str(exc))
            try:
                await self._deliver(request)
            except OSError as again:
                self._lost(str(again))
                raise LaunchError(f"the fork server failed: {again}") from again
        try:
            return await self._receive()
        except (OSError, LaunchError) as exc:
            # Sent, not answered: it may have forked; never launch the attempt twice.
            self._lost(str(exc))
            raise UnansweredLaunch(f"the fork server died before answering: {exc}") from exc

    async def _deliver(self, request: bytes) -> None:
        if self._sock is None:
            await anyio.to_thread.run_sync(self.start)
        await self._send(request)

    async def _send(self, data: bytes) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
                continue
            view = view[sent:]

    async def _receive(self) -> tuple[int, int]:
        assert self._sock is not None
        data = b""
        pidfd = -1
        while len(data) < _ANSWER.size:
            # Wait first: the answer comes only once the server forked, so a read straight
            # after the request would fail (a syscall and an exception for nothing).
            await anyio.wait_readable(self._sock)
            try:
                chunk, ancillary, _flags, _addr = self._sock.recvmsg(
                    _ANSWER.size - len(data), _ANCILLARY_SIZE, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                continue
            if not chunk:
                raise LaunchError("the fork server exited")
            data += chunk
            for level, kind, fds in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    pidfd = _ANSWER.unpack(fds[: _ANSWER.size])[0]
        return _ANSWER.unpack(data)[0], pidfd

    def _lost(self, reason: str) -> None:
        log.warning("fork_server_lost", pid=self._pid, error=reason)
        self.close()

    def close(self) -> None:
        """Stop the server and reap it. Its monitors live on: they are not in its process
        group, and their inits watch the monitors, not the server."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = None
