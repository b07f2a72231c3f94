"""The C monitor against the real kernel: namespaces, cgroups (v1), output, exit records.

Needs root. Every cgroup directory is uniquely named per test and removed afterwards.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict, Unpack

import anyio
import pytest

from scheduler.cgroups.base import LaunchPlan
from scheduler.errors import LaunchError
from scheduler.runtime import launcher
from scheduler.runtime.identity import live_monitor_pid
from scheduler.runtime.launcher import (
    MONITOR_SOURCE,
    monitor_argv,
    monitor_binary,
    read_exit_record,
    spawn,
    wait_monitor,
)
from scheduler.runtime.spec import ExitRecord, LaunchSpec
from tests.conftest import slow

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)"),
]

V1 = Path("/sys/fs/cgroup")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAMESPACES = ("pid", "mnt", "uts", "ipc", "net")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Job:
    def __init__(self, spec: LaunchSpec, pid: int) -> None:
        self.spec = spec
        self.pid = pid

    def _read(self, name: str) -> str:
        try:
            return ((self.spec.output_dir or self.spec.run_dir) / name).read_text()
        except FileNotFoundError:  # the monitor has not opened it yet
            return ""

    @property
    def stdout(self) -> str:
        return self._read("stdout")

    @property
    def stderr(self) -> str:
        return self._read("stderr")

    async def wait(self) -> ExitRecord:
        with anyio.fail_after(slow(30)):
            await wait_monitor(self.pid)
        rec = read_exit_record(self.spec.run_dir)
        assert rec is not None, "the monitor wrote no exit record"
        return rec


class Options(TypedDict, total=False):
    output_dir: Path
    env: dict[str, str]
    cwd: str
    hostname: str
    plan: LaunchPlan
    tmp_size: int


def start(monitor: Path, tmp_path: Path, *argv: str, **options: Unpack[Options]) -> Job:
    spec = LaunchSpec(
        job_id=1,
        attempt=1,
        argv=argv,
        env=options.get("env", {"PATH": PATH}),
        cwd=options.get("cwd", "/"),
        hostname=options.get("hostname", "testjob"),
        run_dir=tmp_path / f"run-{uuid.uuid4().hex[:8]}",
        output_dir=options.get("output_dir"),
        plan=options.get("plan", LaunchPlan()),
        tmp_size_bytes=options.get("tmp_size", 8 * 1024 * 1024),
    )
    return Job(spec, spawn(monitor, spec))


async def run(
    monitor: Path, tmp_path: Path, *argv: str, **options: Unpack[Options]
) -> tuple[ExitRecord, Job]:
    job = start(monitor, tmp_path, *argv, **options)
    return await job.wait(), job


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


async def init_of(job: Job) -> int:
    """The host pid of the job's init (the monitor's only child), once it exists."""
    with anyio.fail_after(slow(10)):
        while not (kids := children(job.pid)):
            await anyio.sleep(0.01)
    return kids[0]


async def wait_for_output(job: Job, text: str) -> None:
    with anyio.fail_after(slow(10)):
        while text not in job.stdout:
            await anyio.sleep(0.01)


# ---- cgroups -----------------------------------------------------------------------------

CgroupFactory = Callable[[str], Path]


def _rmdir(path: Path) -> None:
    for _ in range(500):
        try:
            path.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # Only the test's own job can be in this uniquely named cgroup.
            procs = path / "cgroup.procs"
            for pid in procs.read_text().split() if procs.exists() else []:
                os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.01)
        else:
            return
    path.rmdir()


@pytest.fixture
def cgroup() -> Iterator[CgroupFactory]:
    """``cgroup("pids")`` -> /sys/fs/cgroup/pids/mon-test-<uuid>/job-1 (not yet created)."""
    name = f"mon-test-{uuid.uuid4().hex[:12]}"
    made: list[Path] = []

    def factory(controller: str) -> Path:
        if not (V1 / controller / "cgroup.procs").exists():
            pytest.skip(f"cgroup v1 {controller} hierarchy not mounted")
        parent = V1 / controller / name
        made.extend([parent, parent / "job-1"])
        return parent / "job-1"

    yield factory
    for path in reversed(made):
        _rmdir(path)


def plan_for(leaves: list[Path], writes: tuple[tuple[str, str], ...]) -> LaunchPlan:
    return LaunchPlan(
        mkdirs=tuple(str(p) for leaf in leaves for p in (leaf.parent, leaf)),
        writes=writes,
        procs=tuple(str(leaf / "cgroup.procs") for leaf in leaves),
        dirs=tuple(str(leaf) for leaf in leaves),
    )


# ---- basics ------------------------------------------------------------------------------


async def test_exit_code_and_record(monitor: Path, tmp_path: Path) -> None:
    rec, job = await run(monitor, tmp_path, "sh", "-c", "exit 3")
    assert (rec.kind, rec.exit_code, rec.signal, rec.error) == ("exited", 3, None, None)
    assert 0 < rec.start_ns <= rec.end_ns
    assert rec.maxrss_kb > 0
    assert job.spec.run_dir.stat().st_mode & 0o777 == 0o750
    # The reserved record named the monitor's pid until the record took its place; the job
    # printed nothing, so no output file was made.
    assert {p.name for p in job.spec.run_dir.iterdir()} == {"exit"}

    rec, _ = await run(monitor, tmp_path, "true")
    assert (rec.kind, rec.exit_code) == ("exited", 0)


async def test_killed_by_signal(monitor: Path, tmp_path: Path) -> None:
    rec, _ = await run(monitor, tmp_path, "sh", "-c", "kill -9 $$")
    assert (rec.kind, rec.exit_code, rec.signal) == ("signaled", None, 9)


async def test_cpu_time_is_accounted(monitor: Path, tmp_path: Path) -> None:
    rec, _ = await run(
        monitor, tmp_path, "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
    )
    assert rec.kind == "exited"
    assert rec.utime_us > 10_000


async def test_output_goes_to_files_and_stdin_is_dev_null(monitor: Path, tmp_path: Path) -> None:
    script = "echo out; echo err >&2; cat; readlink /proc/self/fd/0; echo end"
    rec, job = await run(monitor, tmp_path, "sh", "-c", script)
    assert rec.exit_code == 0
    assert job.stdout == "out\n/dev/null\nend\n"
    assert job.stderr == "err\n"


async def test_output_directory_and_files_are_made_on_the_first_byte(
    monitor: Path, tmp_path: Path
) -> None:
    quiet = tmp_path / "out-quiet"
    await run(monitor, tmp_path, "true", output_dir=quiet)
    assert not quiet.exists()

    only_err = tmp_path / "out-err"
    _, job = await run(monitor, tmp_path, "sh", "-c", "echo oops >&2", output_dir=only_err)
    assert {p.name for p in only_err.iterdir()} == {"stderr"}
    assert job.stderr == "oops\n"
    assert only_err.stat().st_mode & 0o777 == 0o750
    # The record stays in the run dir, apart from the output.
    assert {p.name for p in job.spec.run_dir.iterdir()} == {"exit"}


async def test_large_output_arrives_whole_and_in_order(monitor: Path, tmp_path: Path) -> None:
    # 8 MiB through each 64 KiB pipe, interleaved with the exit: nothing may be lost.
    script = "seq 1 1000000; seq 1 200000 >&2; echo last"
    rec, job = await run(monitor, tmp_path, "sh", "-c", script, output_dir=tmp_path / "big")
    assert rec.exit_code == 0
    expected = "".join(f"{i}\n" for i in range(1, 1_000_001)) + "last\n"
    assert job.stdout == expected
    assert job.stderr == "".join(f"{i}\n" for i in range(1, 200_001))


async def test_output_of_a_running_job_is_visible_before_it_ends(
    monitor: Path, tmp_path: Path
) -> None:
    job = start(monitor, tmp_path, "sh", "-c", "echo early; exec sleep 30")
    await wait_for_output(job, "early\n")
    os.kill(await init_of(job), signal.SIGKILL)
    await job.wait()


async def test_missing_binary_is_a_start_error(monitor: Path, tmp_path: Path) -> None:
    rec, _ = await run(monitor, tmp_path, "/no/such/binary")
    assert rec.kind == "start_error"
    assert (rec.exit_code, rec.signal) == (None, None)
    assert rec.error == "exec: /no/such/binary: No such file or directory"


async def test_bad_cwd_is_a_start_error(monitor: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rec, _ = await run(monitor, tmp_path, "touch", str(marker), cwd="/no/such/dir")
    assert rec.kind == "start_error"
    assert rec.error == "cwd: /no/such/dir: No such file or directory"
    assert not marker.exists()


async def test_cwd(monitor: Path, tmp_path: Path) -> None:
    # Not the checkout's own directory: CI may clone under /tmp, which the job cannot see.
    here = Path(sys.base_prefix).resolve()
    rec, job = await run(monitor, tmp_path, "pwd", cwd=str(here))
    assert rec.exit_code == 0
    assert job.stdout == f"{here}\n"
    # The job's /tmp is its own tmpfs: a directory under the host's /tmp is not there.
    if tmp_path.is_relative_to("/tmp"):
        rec, _ = await run(monitor, tmp_path, "pwd", cwd=str(tmp_path))
        assert rec.error == f"cwd: {tmp_path}: No such file or directory"


async def test_environment_passes_exactly(monitor: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FOO": "bar baz", "EMPTY": "", "MULTI": "a\nb", "X": "=y"}
    rec, job = await run(monitor, tmp_path, "/usr/bin/env", "-0", env=env)
    assert rec.exit_code == 0
    entries = [e for e in job.stdout.split("\0") if e]
    assert dict(e.split("=", 1) for e in entries) == env
    assert len(entries) == len(env)


async def test_empty_environment(monitor: Path, tmp_path: Path) -> None:
    rec, job = await run(monitor, tmp_path, "/usr/bin/env", env={})
    assert rec.exit_code == 0
    assert job.stdout == ""


def test_spawn_rejects_bad_env(monitor: Path, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="environment"):
        start(monitor, tmp_path, "true", env={"A=B": "1"})


# ---- isolation ---------------------------------------------------------------------------


async def test_every_namespace_differs_from_the_host(monitor: Path, tmp_path: Path) -> None:
    links = [f"/proc/self/ns/{ns}" for ns in NAMESPACES]
    rec, job = await run(monitor, tmp_path, "readlink", *links)
    assert rec.exit_code == 0
    inside = job.stdout.split()
    assert len(inside) == len(NAMESPACES)
    for ns, link in zip(NAMESPACES, inside, strict=True):
        host = os.readlink(f"/proc/self/ns/{ns}")
        assert link.startswith(f"{ns}:[")
        assert link != host, ns


async def test_pid_namespace_shows_only_the_job(monitor: Path, tmp_path: Path) -> None:
    rec, job = await run(monitor, tmp_path, "ls", "/proc")
    assert rec.exit_code == 0
    assert sorted(int(e) for e in job.stdout.split() if e.isdigit()) == [1, 2]

    rec, job = await run(monitor, tmp_path, "ps", "-e", "-o", "pid=,ppid=,comm=")
    assert rec.exit_code == 0
    rows = [line.split() for line in job.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("1", "0"), ("2", "1")]
    assert rows[1][2] == "ps"

    rec, job = await run(monitor, tmp_path, "readlink", "/proc/self")
    assert job.stdout == "2\n"


async def test_hostname(monitor: Path, tmp_path: Path) -> None:
    rec, job = await run(
        monitor, tmp_path, "sh", "-c", "cat /proc/sys/kernel/hostname; uname -n", hostname="h-42"
    )
    assert rec.exit_code == 0
    assert job.stdout == "h-42\nh-42\n"
    assert os.uname().nodename != "h-42"


async def test_network_has_only_a_working_loopback(monitor: Path, tmp_path: Path) -> None:
    rec, job = await run(monitor, tmp_path, "cat", "/proc/net/dev")
    assert rec.exit_code == 0
    devices = [line.split(":")[0].strip() for line in job.stdout.splitlines()[2:]]
    assert devices == ["lo"]

    if shutil.which("ip"):
        rec, job = await run(monitor, tmp_path, "ip", "-o", "link")
        assert rec.exit_code == 0
        lines = job.stdout.splitlines()
        assert len(lines) == 1
        assert ": lo: <" in lines[0]
        flags = lines[0].split("<", 1)[1].split(">", 1)[0].split(",")
        assert "UP" in flags

    # Loopback really works: a TCP round trip on 127.0.0.1 inside the namespace.
    code = (
        "import socket\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "c = socket.create_connection(s.getsockname())\n"
        "a, _ = s.accept(); c.sendall(b'ping'); print(a.recv(4).decode())\n"
    )
    # The base interpreter, not the venv's: a checkout under /tmp is hidden by the job's /tmp.
    python = str(Path(sys.base_prefix) / "bin" / "python3")
    rec, job = await run(monitor, tmp_path, python, "-c", code)
    assert (rec.exit_code, job.stdout, job.stderr) == (0, "ping\n", "")


async def test_tmp_is_an_empty_private_tmpfs(monitor: Path, tmp_path: Path) -> None:
    marker = f"mon-test-{uuid.uuid4().hex}"
    script = f"ls -A /tmp; echo ---; grep ' /tmp ' /proc/self/mounts; touch /tmp/{marker}"
    rec, job = await run(monitor, tmp_path, "sh", "-c", script, tmp_size=9 * 1024 * 1024)
    assert rec.exit_code == 0
    listing, mounts = job.stdout.split("---\n")
    assert listing == ""
    fields = mounts.split()
    assert fields[1:3] == ["/tmp", "tmpfs"]
    options = fields[3].split(",")
    assert {"nosuid", "nodev", "size=9216k"} <= set(options)
    assert not Path("/tmp", marker).exists()
    host_mounts = Path("/proc/self/mounts").read_text()
    assert "size=9216k" not in host_mounts


async def test_orphans_are_killed_with_the_namespace(monitor: Path, tmp_path: Path) -> None:
    # The job leaves a background sleeper behind; init's exit takes it down.
    with anyio.fail_after(slow(10)):
        rec, _ = await run(monitor, tmp_path, "sh", "-c", "sleep 1000 & exit 5")
    assert (rec.kind, rec.exit_code) == ("exited", 5)


async def test_clone_failure_is_recorded(monitor: Path, tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN the namespaces cannot be made: a start error, not a crash."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    spec = LaunchSpec(
        job_id=1,
        attempt=1,
        argv=("true",),
        env={"PATH": PATH},
        cwd="/",
        hostname="h",
        run_dir=tmp_path / "run",
        plan=LaunchPlan(),
    )
    spec.run_dir.mkdir()
    drop = ["--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    pid = os.posix_spawn(setpriv, [setpriv, *drop, *monitor_argv(monitor, spec)], spec.env)
    with anyio.fail_after(slow(30)):
        await wait_monitor(pid)
    rec = read_exit_record(spec.run_dir)
    assert rec is not None
    assert rec.kind == "start_error"
    assert rec.error == "monitor: clone: Operation not permitted"


# ---- signals -----------------------------------------------------------------------------


async def test_init_forwards_sigterm_and_monitor_ignores_it(monitor: Path, tmp_path: Path) -> None:
    script = 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.05; done'
    job = start(monitor, tmp_path, "sh", "-c", script)
    await wait_for_output(job, "ready")
    os.kill(job.pid, signal.SIGTERM)  # the monitor must survive this
    await anyio.sleep(0.1)
    assert job.spec.run_dir.joinpath("exit").exists() is False
    os.kill(await init_of(job), signal.SIGTERM)
    rec = await job.wait()
    assert (rec.kind, rec.exit_code) == ("exited", 7)
    assert job.stdout == "ready\ngot-term\n"


async def test_a_running_monitor_names_itself_in_its_reserved_record(
    monitor: Path, tmp_path: Path
) -> None:
    job = start(monitor, tmp_path, "sh", "-c", "echo ready; exec sleep 1000")
    await wait_for_output(job, "ready")
    reserve = (job.spec.run_dir / "exit.reserve").read_bytes()
    assert reserve.startswith(f"monitor_pid={job.pid}\n".encode())
    assert len(reserve) == 4096
    assert live_monitor_pid(job.spec.run_dir) == job.pid
    os.kill(await init_of(job), signal.SIGKILL)
    await job.wait()
    assert live_monitor_pid(job.spec.run_dir) is None


async def test_killing_init_is_recorded_as_signaled(monitor: Path, tmp_path: Path) -> None:
    job = start(monitor, tmp_path, "sh", "-c", "echo ready; exec sleep 1000")
    await wait_for_output(job, "ready")
    os.kill(await init_of(job), signal.SIGKILL)
    rec = await job.wait()
    assert (rec.kind, rec.signal) == ("signaled", 9)


# ---- cgroups (v1) ------------------------------------------------------------------------
# The monitor's plans on v1 hierarchies; on a pure v2 host the agent's tests cover its plans.


@pytest.mark.v1_host
async def test_job_is_in_its_cgroups_before_exec(
    monitor: Path, tmp_path: Path, cgroup: CgroupFactory
) -> None:
    pids, memory = cgroup("pids"), cgroup("memory")
    plan = plan_for(
        [pids, memory],
        (
            (str(pids / "pids.max"), "17"),
            (str(memory / "memory.limit_in_bytes"), str(32 * 1024 * 1024)),
        ),
    )
    # The job's first action: its own view of its cgroups, then who is in the leaves (the
    # kernel shows only members of the reader's pid namespace: init is 1, cat is 2).
    rec, job = await run(
        monitor,
        tmp_path,
        "cat",
        "/proc/self/cgroup",
        str(pids / "cgroup.procs"),
        str(memory / "cgroup.procs"),
        plan=plan,
    )
    assert (rec.kind, rec.exit_code) == ("exited", 0), rec.error
    controllers = {}
    members = []
    for line in job.stdout.splitlines():
        if ":" not in line:
            members.append(line)
            continue
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            controllers[name] = path
    # Its own cgroup namespace, rooted at its leaf: nothing of the tree above is visible.
    assert controllers["pids"] == "/"
    assert controllers["memory"] == "/"
    assert members == ["1", "2", "1", "2"]
    assert (pids / "pids.max").read_text().strip() == "17"
    assert int((memory / "memory.limit_in_bytes").read_text()) == 32 * 1024 * 1024
    # The job is gone, and so is everything else that was in the cgroup.
    assert (pids / "cgroup.procs").read_text() == ""


@pytest.mark.v1_host
async def test_pids_limit_is_enforced(monitor: Path, tmp_path: Path, cgroup: CgroupFactory) -> None:
    pids = cgroup("pids")
    plan = plan_for([pids], ((str(pids / "pids.max"), "3"),))
    script = "for i in 1 2 3 4 5 6; do sleep 5 & done; wait"
    rec, job = await run(monitor, tmp_path, "sh", "-c", script, plan=plan)
    assert rec.kind == "exited"
    assert "fork" in job.stderr.lower() or "resource" in job.stderr.lower(), job.stderr


@pytest.mark.v1_host
async def test_bad_write_is_a_start_error_naming_the_file(
    monitor: Path, tmp_path: Path, cgroup: CgroupFactory
) -> None:
    memory = cgroup("memory")
    limit = memory / "memory.limit_in_bytes"
    plan = plan_for([memory], ((str(limit), "lots"),))
    marker = tmp_path / "ran"
    rec, _ = await run(monitor, tmp_path, "touch", str(marker), plan=plan)
    assert rec.kind == "start_error"
    assert rec.error == f"cgroup: write {limit}: Invalid argument"
    assert not marker.exists()


async def test_bad_procs_file_kills_init_before_the_job_runs(monitor: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = f"/sys/fs/cgroup/pids/mon-test-{uuid.uuid4().hex[:12]}/cgroup.procs"
    plan = LaunchPlan(procs=(bad,))
    rec, _ = await run(monitor, tmp_path, "touch", str(marker), plan=plan)
    assert rec.kind == "start_error"
    assert rec.error == f"cgroup: write {bad}: No such file or directory"
    assert not marker.exists()


# ---- concurrency -------------------------------------------------------------------------


async def test_many_jobs_in_flight(monitor: Path, tmp_path: Path) -> None:
    results: dict[int, tuple[ExitRecord, str]] = {}

    async def one(i: int) -> None:
        rec, job = await run(monitor, tmp_path, "sh", "-c", f"echo {i}; exit {i}")
        results[i] = (rec, job.stdout)

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
    for i in range(16):
        rec, out = results[i]
        assert (rec.kind, rec.exit_code, out) == ("exited", i, f"{i}\n")


def test_monitor_binary_is_cached(monitor: Path) -> None:
    assert monitor_binary(monitor.parent) == monitor
    assert monitor.name.startswith("scheduler-monitor-")
    assert [p.name for p in monitor.parent.iterdir()] == [monitor.name]


def test_monitor_sources_compile_warning_free(tmp_path: Path) -> None:
    """The monitor is split by concern into units of one directory, built into one binary;
    every unit compiles clean under -Wall -Wextra."""
    sources = Path(launcher.__file__).parent / MONITOR_SOURCE
    units = sorted(sources.glob("*.c"))
    names = {p.name for p in units}
    assert {"main.c", "init.c", "forkserver.c", "exitrecord.c", "drain.c"} <= names
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    out = subprocess.run(
        [compiler, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "m")]
        + [str(p) for p in units],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_c_binary_builds_a_directory_into_one_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every .c of a source directory is linked into one binary, named after the hash of
    all its .c and .h files: a changed header alone gives a new binary."""
    package = tmp_path / "package"
    src = package / "prog"
    src.mkdir(parents=True)
    (src / "value.h").write_text("#define VALUE 3\nint value(void);\n")
    (src / "value.c").write_text('#include "value.h"\nint value(void) { return VALUE; }\n')
    (src / "main.c").write_text('#include "value.h"\nint main(void) { return value(); }\n')
    (src / "notes.txt").write_text("not a source\n")
    monkeypatch.setattr("importlib.resources.files", lambda _package: package)
    cache = tmp_path / "cache"
    first = launcher.c_binary(cache, "prog", "prog")
    assert subprocess.run([str(first)], check=False).returncode == 3
    (src / "notes.txt").write_text("still not a source\n")
    assert launcher.c_binary(cache, "prog", "prog") == first
    (src / "value.h").write_text("#define VALUE 5\nint value(void);\n")
    second = launcher.c_binary(cache, "prog", "prog")
    assert second != first
    assert subprocess.run([str(second)], check=False).returncode == 5
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(LaunchError, match="no C compiler"):
        monitor_binary(tmp_path / "cache")


def test_compiler_failure_includes_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\necho 'monitor.c:1: error: something broke' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(LaunchError, match="something broke"):
        monitor_binary(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
