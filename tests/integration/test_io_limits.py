"""io limits: the v1 blkio files on a v1/hybrid host, and on any host the kernel holding a
job's write rate to its limit (v2: io.max, checked by tests/v2 too)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from scheduler.cgroups.base import CgroupPath, Limits
from scheduler.cgroups.detect import detect_layout, open_driver
from scheduler.cgroups.devices import disk_of
from scheduler.cgroups.v1 import V1Driver
from tests.conftest import SCRATCH, AgentHandle
from tests.integration.test_agent import output, submit, wait_final

MB = 1_000_000


@pytest.fixture
def v1() -> Iterator[V1Driver]:
    layout = detect_layout()
    if layout.mode == "v2" or "blkio" not in layout.v1:
        pytest.skip("no v1 blkio hierarchy on this host")
    driver = open_driver(f"iotest-{uuid.uuid4().hex[:8]}", layout=layout)
    assert isinstance(driver, V1Driver)
    try:
        yield driver
    finally:
        driver.remove_tree(CgroupPath(()))


@pytest.mark.v1_host
def test_tenant_and_job_io_limits_become_blkio_throttle_rules(v1: V1Driver) -> None:
    disk = disk_of(Path("/tmp"))
    if disk is None:
        pytest.skip("/tmp is not on a block device")
    tenant = CgroupPath(("acme",))
    limits = Limits(io_read_bps=50 * MB, io_write_bps=20 * MB, weight=300, io_devices=(disk,))
    v1.ensure(tenant, limits)
    blkio = v1.directory("blkio", tenant)
    for weight_file, value in (("blkio.weight", "1000"), ("blkio.bfq.weight", "300")):
        if (blkio / weight_file).exists():  # CFQ or BFQ; neither: skipped with a log line
            assert (blkio / weight_file).read_text().split()[-1] == value
            break
    assert (blkio / "blkio.throttle.read_bps_device").read_text().split() == [disk, str(50 * MB)]
    assert (blkio / "blkio.throttle.write_bps_device").read_text().split() == [disk, str(20 * MB)]
    plan = v1.plan(CgroupPath(("acme", "job-1")), Limits(io_write_bps=MB, io_devices=(disk,)))
    leaf = v1.directory("blkio", CgroupPath(("acme", "job-1")))
    assert (f"{leaf}/blkio.throttle.write_bps_device", f"{disk} {MB}") in plan.writes
    # Dropping the tenant's limits removes the rules ("MAJ:MIN 0").
    v1.ensure(tenant, Limits(io_devices=(disk,)))
    assert (blkio / "blkio.throttle.read_bps_device").read_text() == ""
    assert (blkio / "blkio.throttle.write_bps_device").read_text() == ""


@pytest.mark.anyio
async def test_a_job_io_write_limit_is_enforced_by_the_kernel(
    db: asyncpg.Connection, agent: AgentHandle
) -> None:
    # Direct writes to a host disk (the job's /tmp and /var/tmp are private tmpfs): 6 MiB at
    # 2 MiB/s, in a directory the tenant's uid may write.
    shared = Path(tempfile.mkdtemp(prefix="sched-io-", dir=SCRATCH))
    shared.chmod(0o1777)
    target = shared / "data"
    script = f"dd if=/dev/zero of={target} bs=1M count=6 oflag=direct 2>&1; rm -f {target}"
    try:
        limited = await submit(db, ["sh", "-c", script], io_write_bps=2 * 1024 * 1024)
        [row] = await wait_final(db, [limited], timeout=60)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert row["state"] == "succeeded", output(agent, limited)
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 1.5
    assert row["io_write_bytes"] >= 6 * 1024 * 1024
