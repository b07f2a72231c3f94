"""The attempt identity in the monitor's records (runtime/records.py): written into the
reservation and the exit record, refused when malformed, and what a launch does with
another attempt's leftovers in its directories."""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from pathlib import Path

import anyio
import pytest

from scheduler.cgroups.base import LaunchPlan
from scheduler.errors import LaunchError
from scheduler.runtime.identity import reserved_identity
from scheduler.runtime.launcher import read_exit_record, spawn, wait_monitor
from scheduler.runtime.records import AttemptIdentity, clear_leftovers, mismatch
from scheduler.runtime.spec import ExitRecord, LaunchSpec
from tests.conftest import slow

pytestmark = pytest.mark.anyio
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MINE = AttemptIdentity(f"{uuid.uuid4()}.16384", 2, 3, 1, 1_765_000_000_123_456)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def spec_for(tmp_path: Path, identity: str | None, *argv: str) -> LaunchSpec:
    (tmp_path / "runs").mkdir(exist_ok=True)  # the agent's runs dir; the monitor makes 3-1
    return LaunchSpec(
        job_id=3,
        attempt=1,
        argv=argv,
        env={"PATH": PATH},
        cwd="/",
        hostname="testjob",
        run_dir=tmp_path / "run" / "3-1",
        output_dir=tmp_path / "runs" / "3-1",
        plan=LaunchPlan(),
        tmp_size_bytes=8 * 1024 * 1024,
        identity=identity,
    )


async def run(monitor: Path, spec: LaunchSpec) -> ExitRecord:
    pid = spawn(monitor, spec)
    with anyio.fail_after(slow(30)):
        await wait_monitor(pid)
    rec = read_exit_record(spec.run_dir)
    assert rec is not None
    return rec


async def test_identity_is_in_the_reservation_and_the_exit_record(
    monitor: Path, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, MINE.token, "sh", "-c", "echo hi; sleep 0.5; exit 4")
    pid = spawn(monitor, spec)
    with anyio.fail_after(slow(10)):
        while reserved_identity(spec.run_dir) is None:
            await anyio.sleep(0.01)
    assert reserved_identity(spec.run_dir) == MINE.token
    with anyio.fail_after(slow(30)):
        await wait_monitor(pid)
    rec = read_exit_record(spec.run_dir)
    assert rec is not None
    assert (rec.kind, rec.exit_code, rec.identity) == ("exited", 4, MINE.token)
    assert mismatch(MINE, rec.identity) is None


async def test_no_identity_writes_none(monitor: Path, tmp_path: Path) -> None:
    rec = await run(monitor, spec_for(tmp_path, None, "true"))
    assert (rec.kind, rec.identity) == ("exited", None)


@pytest.mark.parametrize("bad", ["has space", "new\nline", "x=y", "a" * 201])
async def test_a_malformed_identity_is_a_start_error(
    monitor: Path, tmp_path: Path, bad: str
) -> None:
    rec = await run(monitor, spec_for(tmp_path, bad, "true"))
    assert rec.kind == "start_error"
    assert rec.error is not None and "bad --identity" in rec.error
    assert rec.identity is None


def test_mismatch_reasons() -> None:
    same = MINE.token
    assert mismatch(MINE, same) is None
    assert mismatch(MINE, None) is None  # a record of an earlier version
    earlier_epoch = dataclasses.replace(MINE, epoch=1).token
    assert mismatch(MINE, earlier_epoch) is None  # the restart moved the attempt on
    cases = {
        dataclasses.replace(MINE, database=f"{uuid.uuid4()}.16384"): "another database",
        dataclasses.replace(MINE, database=MINE.database.replace("16384", "16385")): (
            "another database"
        ),
        dataclasses.replace(MINE, attempt=2): "another job or attempt",
        dataclasses.replace(MINE, job_id=4): "another job or attempt",
        dataclasses.replace(MINE, submitted_us=MINE.submitted_us + 1): "had the same id",
        dataclasses.replace(MINE, epoch=3): "later epoch",
    }
    for other, reason in cases.items():
        why = mismatch(MINE, other.token)
        assert why is not None and reason in why, (other, why)
    assert mismatch(MINE, "garbage") == "its identity does not parse"
    assert AttemptIdentity.parse(MINE.token) == MINE


async def test_a_launch_clears_a_dead_attempts_records_and_refuses_a_live_ones(
    monitor: Path, tmp_path: Path
) -> None:
    other = dataclasses.replace(MINE, database=f"{uuid.uuid4()}.1")
    old = spec_for(tmp_path, other.token, "sh", "-c", "echo old")
    await run(monitor, old)
    assert (tmp_path / "runs" / "3-1" / "stdout").read_text() == "old\n"
    assert clear_leftovers(old.run_dir, tmp_path / "runs" / "3-1", MINE) == other.token
    assert not old.run_dir.exists() and not (tmp_path / "runs" / "3-1").exists()
    assert clear_leftovers(old.run_dir, tmp_path / "runs" / "3-1", MINE) is None

    live = spec_for(tmp_path, other.token, "sleep", "30")
    pid = spawn(monitor, live)
    try:
        with anyio.fail_after(slow(10)):
            while reserved_identity(live.run_dir) is None:
                await anyio.sleep(0.01)
        with pytest.raises(LaunchError, match="holds the running monitor"):
            clear_leftovers(live.run_dir, tmp_path / "runs" / "3-1", MINE)
        assert reserved_identity(live.run_dir) == other.token  # left alone
    finally:
        # SIGKILL to the job's init (the monitor's child) ends its pid namespace; the monitor
        # records that and exits.
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGKILL)
        with anyio.fail_after(slow(30)):
            await wait_monitor(pid)
