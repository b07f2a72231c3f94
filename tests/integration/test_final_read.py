"""The monitor's final read of a job's cgroup (FinalRead) against the real kernel: the texts
it records are the cgroup's own counters after the job, and it records nothing when the
cgroup is not empty or not there (the agent then reads the cgroup itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import anyio
import pytest

from scheduler.agent.recorder import Completion, Outbox
from scheduler.agent.runner import Runner
from scheduler.agent.tenants import TenantCgroups
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.cgroups.counters import (
    CounterReader,
    counter_files,
    final_read,
    parse_sample,
    read_final,
)
from scheduler.cgroups.detect import open_driver
from scheduler.cgroups.v2 import V2Driver
from scheduler.runtime.launcher import read_exit_record, spawn, wait_monitor
from scheduler.runtime.spec import Credentials, ExitRecord, FinalRead, LaunchSpec
from tests import factories
from tests.conftest import slow

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)"),
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Burns some cpu and touches 8 MiB of its private /tmp (charged to the job's memory).
BUSY = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; head -c 8388608 /dev/zero > /tmp/f"


@pytest.fixture
def driver(cgroup_root: str) -> CgroupDriver:
    d = open_driver(cgroup_root)
    d.ensure(CgroupPath(()), Limits())
    d.ensure(CgroupPath(("acme",)), Limits())
    return d


def launch(
    monitor: Path,
    driver: CgroupDriver,
    tmp_path: Path,
    job_id: int,
    script: str,
    read: FinalRead | None = None,
) -> tuple[LaunchSpec, CgroupPath, int]:
    cgroup = CgroupPath(("acme", f"job-{job_id}"))
    spec = LaunchSpec(
        job_id=job_id,
        attempt=1,
        argv=("sh", "-c", script),
        env={"PATH": PATH},
        cwd="/",
        hostname=f"job-{job_id}",
        run_dir=tmp_path / f"run-{job_id}",
        plan=driver.plan(cgroup, Limits(memory_bytes=256 << 20, pids_max=64)),
        credentials=Credentials(65534, 65534),
        final_read=read or final_read(driver, cgroup),
    )
    return spec, cgroup, spawn(monitor, spec)


async def ended(spec: LaunchSpec, pid: int) -> ExitRecord:
    with anyio.fail_after(slow(30)):
        await wait_monitor(pid)
    record = read_exit_record(spec.run_dir)
    assert record is not None
    return record


async def test_recorded_counters_are_the_cgroups_after_the_job(
    monitor: Path, driver: CgroupDriver, tmp_path: Path
) -> None:
    spec, cgroup, pid = launch(monitor, driver, tmp_path, 1, BUSY)
    record = await ended(spec, pid)
    assert record.kind == "exited" and record.exit_code == 0, record
    assert record.counters is not None
    recorded = parse_sample(driver, record.counters)
    # The cgroup is still there (the agent removes it once the end is committed): the
    # monitor's texts are what a read of it now says.
    now = read_final(driver, cgroup, None)
    for billed in ("cpu_ns", "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "oom_kills"):
        assert getattr(recorded, billed) == getattr(now, billed), billed
    usage = recorded.usage()
    assert usage.cpu_ns > 0
    assert usage.memory_peak_bytes >= 8 << 20
    assert usage.cpu_user_ns + usage.cpu_system_ns > 0 or driver.name == "v2"


async def test_a_killed_job_has_its_counters_recorded_too(
    monitor: Path, driver: CgroupDriver, tmp_path: Path
) -> None:
    spec, _, pid = launch(monitor, driver, tmp_path, 2, f"{BUSY}; kill -9 $$")
    record = await ended(spec, pid)
    assert record.kind == "signaled" and record.signal == 9
    assert record.counters is not None
    assert parse_sample(driver, record.counters).usage().cpu_ns > 0


async def test_nothing_is_recorded_while_the_cgroup_still_has_a_process(
    monitor: Path, driver: CgroupDriver, tmp_path: Path
) -> None:
    spec, _, pid = launch(monitor, driver, tmp_path, 3, "sleep 1.5")
    # A process of the host's (not the job's) joins the job's cgroup while the job runs: the
    # job's end does not empty the cgroup, so the monitor must not take its counters as final.
    stray = subprocess.Popen(["sleep", "30"])
    try:
        with anyio.fail_after(slow(10)):
            while not all(os.path.exists(p) for p in spec.plan.procs):
                await anyio.sleep(0.01)
        for procs in spec.plan.procs:
            with open(procs, "w") as f:
                f.write(str(stray.pid))
        record = await ended(spec, pid)
        assert record.kind == "exited" and record.exit_code == 0
        assert record.counters is None
    finally:
        stray.kill()
        stray.wait()


async def test_nothing_is_recorded_for_a_cgroup_that_is_not_there(
    monitor: Path, driver: CgroupDriver, tmp_path: Path
) -> None:
    gone = final_read(driver, CgroupPath(("acme", f"never-{uuid.uuid4().hex[:8]}")))
    spec, _, pid = launch(monitor, driver, tmp_path, 4, "true", read=gone)
    record = await ended(spec, pid)
    assert record.kind == "exited" and record.counters is None


async def test_files_this_kernel_lacks_are_left_out(
    monitor: Path, driver: CgroupDriver, tmp_path: Path
) -> None:
    own = final_read(driver, CgroupPath(("acme", "job-5")))
    lacking = FinalRead(
        counters=(*own.counters, ("not.here", f"{Path(own.empty_check).parent}/no.such")),
        gauges=own.gauges,
        empty_check=own.empty_check,
    )
    spec, _, pid = launch(monitor, driver, tmp_path, 5, "true", read=lacking)
    record = await ended(spec, pid)
    assert record.counters is not None
    assert "not.here" not in record.counters
    assert set(record.counters) == {name for name, _ in own.counters + own.gauges}


async def test_a_counter_name_that_would_break_the_record_is_a_start_error(
    monitor: Path, driver: CgroupDriver, tmp_path: Path
) -> None:
    own = final_read(driver, CgroupPath(("acme", "job-6")))
    bad = FinalRead(counters=(("a=b", own.counters[0][1]),), gauges=(), empty_check=own.empty_check)
    spec, _, pid = launch(monitor, driver, tmp_path, 6, "true", read=bad)
    record = await ended(spec, pid)
    assert record.kind == "start_error"
    assert record.error == "monitor: bad counter name a=b"


@pytest.mark.parametrize("populated", [0, 1])
async def test_v2_files_as_the_kernel_writes_them(
    monitor: Path, driver: CgroupDriver, tmp_path: Path, populated: int
) -> None:
    # This host has no cgroup v2 controllers: the monitor reads captured v2 files instead
    # (tests/fixtures/cgroupv2), and its texts must parse to what the agent's reader gets.
    mount = tmp_path / "cgroup2"
    shutil.copytree(FIXTURES / "cgroupv2", mount)
    job = CgroupPath(("acme", "job-42"))
    (mount / "scheduler" / "acme" / "job-42" / "cgroup.events").write_text(
        f"populated {populated}\nfrozen 0\n"
    )
    v2 = V2Driver(mount, "scheduler")
    read = final_read(v2, job)
    assert read.empty_check.endswith("/scheduler/acme/job-42/cgroup.events")
    spec, _, pid = launch(monitor, driver, tmp_path, 7, "true", read=read)
    record = await ended(spec, pid)
    if populated:
        assert record.counters is None
        return
    assert record.counters is not None
    assert set(record.counters) == {
        "cpu.stat",
        "memory.current",
        "memory.peak",
        "memory.events",
        "io.stat",
    }
    reader = CounterReader(counter_files(v2, job, final=True))
    try:
        assert parse_sample(v2, record.counters) == reader.read()
    finally:
        reader.close()
    assert parse_sample(v2, record.counters).usage().io_read_bytes == 1040384 + 90267648


@pytest.mark.parametrize("from_monitor", [True, False])
async def test_the_agent_bills_the_monitors_counters_else_reads_the_cgroup(
    driver: CgroupDriver, tmp_path: Path, from_monitor: bool
) -> None:
    cgroup = CgroupPath(("acme", "job-9"))
    for leaf in driver.plan(cgroup, Limits()).mkdirs:
        os.makedirs(leaf)
    send, receive = anyio.create_memory_object_stream[Completion](4)
    runner = Runner(
        driver=driver,
        tenants=TenantCgroups(None, driver),  # type: ignore[arg-type]  # no chain() here
        monitor=tmp_path / "unused",
        runs_dir=tmp_path / "runs",
        monitors_dir=tmp_path / "monitors",
        node="n",
        completions=Outbox(send),
    )
    # Counters no cgroup of an empty job could show: which source was billed is plain. In the
    # files the driver's monitor records (each driver reads its own: cgroups/v1.py, v2.py).
    if driver.name == "v1":
        counters = {"cpuacct.usage": "987654321", "memory.max_usage_in_bytes": "7340032"}
    else:
        counters = {"cpu.stat": "usage_usec 987654\n", "memory.peak": "7340032\n"}
    billed_cpu_ns = 987654321 if driver.name == "v1" else 987654000
    record = ExitRecord(
        "exited", 0, None, None, 1_000, 2_000, 0, 0, 0, counters if from_monitor else None
    )
    job = factories.job(9, memory_bytes=64 << 20, pids_max=16)
    with send, receive:
        await runner.finish(job, cgroup, record, timed_out=False)
        completion = receive.receive_nowait()
    assert completion.outcome.state == "succeeded"
    kernel = read_final(driver, cgroup, None).usage()
    if from_monitor:
        assert (completion.usage.cpu_ns, completion.usage.memory_peak_bytes) == (
            billed_cpu_ns,
            7340032,
        )
    else:
        assert completion.usage.cpu_ns == kernel.cpu_ns != billed_cpu_ns
