"""The fork server against the real kernel: monitors forked from one running process.

Needs root (the monitors make namespaces). No cgroups: the plans are empty.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from scheduler.cgroups.base import LaunchPlan
from scheduler.errors import LaunchError
from scheduler.runtime.forkserver import ForkServer
from scheduler.runtime.identity import live_monitor_pid
from scheduler.runtime.launcher import RESERVE_FILE, read_exit_record, wait_monitor
from scheduler.runtime.spec import ExitRecord, LaunchSpec
from tests.conftest import slow

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
]

PATH = "/usr/bin:/bin"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server(monitor: Path) -> AsyncIterator[ForkServer]:
    started = ForkServer(monitor)
    started.start()
    try:
        yield started
    finally:
        started.close()


def spec(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> LaunchSpec:
    name = uuid.uuid4().hex[:8]
    return LaunchSpec(
        job_id=1,
        attempt=1,
        argv=argv,
        env={"PATH": PATH} if env is None else env,
        cwd="/",
        hostname="forked",
        run_dir=tmp_path / f"run-{name}",
        output_dir=tmp_path / f"out-{name}",
        plan=LaunchPlan(),
        tmp_size_bytes=1 << 20,
    )


async def run(server: ForkServer, launch: LaunchSpec) -> ExitRecord:
    pid, pidfd = await server.launch(launch)
    try:
        with anyio.fail_after(slow(30)):
            await wait_monitor(pid, pidfd)
    finally:
        os.close(pidfd)
    record = read_exit_record(launch.run_dir)
    assert record is not None
    return record


def output(launch: LaunchSpec, name: str = "stdout") -> str:
    assert launch.output_dir is not None
    path = launch.output_dir / name
    return path.read_text() if path.exists() else ""


async def test_a_forked_monitor_runs_the_job_with_exactly_its_environment(
    server: ForkServer, tmp_path: Path
) -> None:
    script = 'env | sort; printf "[%s]" "$1"'
    launch = spec(tmp_path, "sh", "-c", script, "sh", "", env={"PATH": PATH, "X": "a b"})
    record = await run(server, launch)
    assert (record.kind, record.exit_code) == ("exited", 0)
    lines = output(launch).split("\n")
    assert "X=a b" in lines and f"PATH={PATH}" in lines
    assert lines[-1] == "[]"  # an empty argument arrives as one


def capabilities(status: str) -> dict[str, int]:
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return {k: int(fields[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


async def test_the_server_empties_its_bounding_set_once_and_jobs_still_end_with_none(
    server: ForkServer, tmp_path: Path
) -> None:
    # Root's job (no credentials: only tests do that). Its init mounted /proc and /tmp and
    # brought lo up with the capabilities the server kept (a failure is a start error).
    launch = spec(tmp_path, "cat", "/proc/self/status")
    record = await run(server, launch)
    assert (record.kind, record.exit_code) == ("exited", 0), record
    status = output(launch)
    # The server answered, so it is past its start: its own capabilities stay (a forked
    # monitor mounts, clones and moves processes with them), what an exec could grant is gone.
    assert server.pid is not None
    own = capabilities(Path(f"/proc/{server.pid}/status").read_text())
    assert own["CapBnd"] == 0 and own["CapEff"] != 0
    assert capabilities(status) == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0
    )
    assert "NoNewPrivs:\t1" in status


async def test_start_errors_and_exit_codes_come_back_as_from_an_exec_monitor(
    server: ForkServer, tmp_path: Path
) -> None:
    missing = await run(server, spec(tmp_path, "/no/such/binary"))
    assert missing.kind == "start_error"
    assert missing.error == "exec: /no/such/binary: No such file or directory"
    failed = await run(server, spec(tmp_path, "sh", "-c", "echo no >&2; exit 4"))
    assert (failed.kind, failed.exit_code) == ("exited", 4)


async def test_many_launches_in_flight_and_no_zombies_left(
    server: ForkServer, tmp_path: Path
) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(run, server, spec(tmp_path, "sh", "-c", f"exit {i % 3}"))
    assert server.pid is not None
    with anyio.fail_after(slow(10)):
        while any(
            Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
            for pid in _children(server.pid)
        ):
            await anyio.sleep(0.01)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def test_a_forked_monitor_is_named_by_its_pid_and_start_time(
    server: ForkServer, tmp_path: Path
) -> None:
    launch = spec(tmp_path, "sh", "-c", "echo up; exec sleep 30")
    pid, pidfd = await server.launch(launch)
    try:
        with anyio.fail_after(slow(10)):
            while "up" not in output(launch):
                await anyio.sleep(0.01)
        # Its command line is the server's; the record's head names it all the same.
        assert live_monitor_pid(launch.run_dir) == pid
        head = (launch.run_dir / RESERVE_FILE).read_bytes().split(b"\0")[0].decode()
        wrong = head.replace("monitor_start=", "monitor_start=1")
        (launch.run_dir / RESERVE_FILE).write_text(wrong)
        assert live_monitor_pid(launch.run_dir) is None  # same pid, another start time
        # The server going away leaves its monitors running.
        server.close()
        await anyio.sleep(0.2)
        assert Path(f"/proc/{pid}").exists()
        init = _children(pid)[0]
        os.kill(init, signal.SIGKILL)
        with anyio.fail_after(slow(10)):
            await wait_monitor(pid, pidfd)
    finally:
        os.close(pidfd)
    record = read_exit_record(launch.run_dir)
    assert record is not None and record.kind == "signaled"


async def test_a_dead_server_is_replaced_at_the_next_launch(
    server: ForkServer, tmp_path: Path
) -> None:
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with anyio.fail_after(slow(10)):
        while Path(f"/proc/{first}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            await anyio.sleep(0.01)
    record = await run(server, spec(tmp_path, "true"))
    assert (record.kind, record.exit_code) == ("exited", 0)
    assert server.pid not in (None, first)
    assert not Path(f"/proc/{first}").exists()  # the dead one was reaped


async def test_a_request_larger_than_the_limit_is_refused_before_sending(
    server: ForkServer, tmp_path: Path
) -> None:
    with pytest.raises(LaunchError, match="exceed"):
        await server.launch(spec(tmp_path, "true", env={"BIG": "x" * (17 << 20)}))
    record = await run(server, spec(tmp_path, "true"))
    assert record.exit_code == 0
