"""Desired state, end to end on the real kernel: freeze, thaw and cancel through UPDATE and the
CLI, tenant freezes, and time limits that count running time only."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.cgroups.parse import parse_pids
from tests import cgroup_files
from tests.conftest import AgentHandle, agent_settings, slow, start_agent
from tests.integration.test_agent import output, submit, wait_final, wait_state

pytestmark = pytest.mark.anyio
BURN = ["sh", "-c", "while :; do :; done"]


@pytest.fixture
async def fast_agent(dsn: str, state_dir: Path, cgroup_root: str) -> AsyncIterator[AgentHandle]:
    """An agent with a short SIGTERM grace, so that time-limit tests stay quick."""
    async with anyio.create_task_group() as tg:
        settings = agent_settings(dsn, state_dir, cgroup_root, term_grace_seconds=0.5)
        yield await start_agent(tg, settings)
        tg.cancel_scope.cancel()


def cpu_ns(cgroup_root: str, *parts: str) -> int:
    return open_driver(cgroup_root).read_usage(CgroupPath(parts)).cpu_ns


def freezer_state(cgroup_root: str, *parts: str) -> str:
    return cgroup_files.freezer_state(cgroup_root, *parts)


def job_pids(cgroup_root: str, *parts: str) -> list[int]:
    procs = cgroup_files.procs(cgroup_root, *parts)
    return parse_pids(procs.read_text()) if procs.exists() else []


async def wait_burning(cgroup_root: str, *parts: str) -> None:
    """Wait until the job's cgroup holds processes that use cpu."""
    with anyio.fail_after(slow(20)):
        while not job_pids(cgroup_root, *parts) or cpu_ns(cgroup_root, *parts) < 20_000_000:
            await anyio.sleep(0.02)


async def wait_gone(pids: list[int], directory: Path | None = None) -> None:
    """Wait (bounded) until no pid is alive, not even as a zombie, and ``directory`` is gone
    (the recorder removes the cgroup just after committing the end)."""

    def alive(pid: int) -> bool:
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False

    with anyio.fail_after(slow(10)):
        while any(alive(p) for p in pids) or (directory is not None and directory.exists()):
            await anyio.sleep(0.02)


async def set_desired(db: asyncpg.Connection, job_id: int, desired: str) -> None:
    await db.execute("UPDATE scheduler.jobs SET desired_state = $2 WHERE id = $1", job_id, desired)


async def test_frozen_job_burns_no_cpu_and_runs_again_when_thawed(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    job_id = await submit(db, BURN, cpu=Decimal("0.5"))
    leaf = ("default", f"job-{job_id}")
    await wait_burning(cgroup_root, *leaf)
    await set_desired(db, job_id, "frozen")
    await wait_state(db, job_id, "frozen", timeout=5)
    # The state column follows the kernel: when it says frozen, the freezer already does.
    assert freezer_state(cgroup_root, *leaf) == "FROZEN"
    before = cpu_ns(cgroup_root, *leaf)
    await anyio.sleep(1.0)
    assert cpu_ns(cgroup_root, *leaf) - before < 5_000_000  # not a single 5 ms slice
    await set_desired(db, job_id, "running")
    await wait_state(db, job_id, "running", timeout=5)
    assert freezer_state(cgroup_root, *leaf) == "THAWED"
    thawed = cpu_ns(cgroup_root, *leaf)
    await anyio.sleep(0.5)
    assert cpu_ns(cgroup_root, *leaf) - thawed > 50_000_000  # runs again (0.5 core cap)
    await set_desired(db, job_id, "cancelled")
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "cancelled"
    assert row["error"] == "cancelled on request"


async def test_cancel_of_a_frozen_job_leaves_no_process(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    job_id = await submit(db, ["sh", "-c", "sleep 300 & sleep 300 & while :; do :; done"])
    leaf = ("default", f"job-{job_id}")
    await wait_burning(cgroup_root, *leaf)
    with anyio.fail_after(slow(10)):
        while len(job_pids(cgroup_root, *leaf)) < 4:  # init, sh and two sleeps
            await anyio.sleep(0.02)
    await set_desired(db, job_id, "frozen")
    await wait_state(db, job_id, "frozen", timeout=5)
    pids = job_pids(cgroup_root, *leaf)
    await set_desired(db, job_id, "cancelled")
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "cancelled"
    await wait_gone(pids, cgroup_files.directory("freezer", cgroup_root, *leaf))
    usage = await db.fetch("SELECT * FROM scheduler.usage WHERE job_id = $1", job_id)
    assert [u["final"] for u in usage] == [True]


async def test_time_limit_counts_running_time_only(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    # Prints a tick every 0.1 s of running: 1 s of limit, 2 s frozen in the middle.
    ticker = "trap 'echo term; exit 0' TERM; while :; do echo tick; sleep 0.1; done"
    job_id = await submit(db, ["sh", "-c", ticker], timeout_seconds=Decimal(1))
    await wait_state(db, job_id, "running")
    with anyio.fail_after(slow(10)):
        while not job_pids(cgroup_root, "default", f"job-{job_id}"):
            await anyio.sleep(0.01)
    await anyio.sleep(0.3)
    await set_desired(db, job_id, "frozen")
    await wait_state(db, job_id, "frozen", timeout=5)
    await anyio.sleep(2.0)
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", job_id) == "frozen"
    await set_desired(db, job_id, "running")
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "timed_out"
    wall = (row["finished_at"] - row["started_at"]).total_seconds()
    assert wall >= 2.8  # 1 s running + 2 s frozen, not 1 s
    lines = output(fast_agent, job_id).split()
    # SIGTERM came first (the job's trap ran), after about ten ticks of running time.
    assert lines[-1] == "term"
    assert 5 <= lines.count("tick") <= 40


async def test_time_limit_kills_after_the_grace_when_sigterm_is_ignored(
    db: asyncpg.Connection, fast_agent: AgentHandle
) -> None:
    job_id = await submit(
        db, ["sh", "-c", "trap '' TERM; sleep 300"], timeout_seconds=Decimal("0.3")
    )
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "timed_out"
    assert row["error"] == "time limit reached"
    # 0.3 s limit + 0.5 s grace, then SIGKILL.
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 0.7


async def test_frozen_tenant_stops_its_jobs_and_holds_its_queue(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    ids = [await submit(db, BURN, tenant="acme", cpu=Decimal("0.2")) for _ in range(3)]
    for job_id in ids:
        await wait_burning(cgroup_root, "acme", f"job-{job_id}")
    # One job frozen on its own first: thawing the tenant must not thaw it.
    await set_desired(db, ids[0], "frozen")
    await wait_state(db, ids[0], "frozen", timeout=5)
    await db.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'acme'")
    for job_id in ids:
        await wait_state(db, job_id, "frozen", timeout=5)
    assert freezer_state(cgroup_root, "acme") == "FROZEN"
    held = await submit(db, ["true"], tenant="acme")
    before = cpu_ns(cgroup_root, "acme")
    await anyio.sleep(1.0)
    assert cpu_ns(cgroup_root, "acme") - before < 5_000_000
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", held) == "queued"
    await db.execute("UPDATE scheduler.tenants SET frozen = false WHERE name = 'acme'")
    [held_row] = await wait_final(db, [held], timeout=10)
    assert held_row["state"] == "succeeded"
    for job_id in ids[1:]:
        await wait_state(db, job_id, "running", timeout=5)
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", ids[0]) == "frozen"
    assert freezer_state(cgroup_root, "acme", f"job-{ids[0]}") == "FROZEN"
    assert freezer_state(cgroup_root, "acme", f"job-{ids[1]}") == "THAWED"
    await db.execute(
        "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = ANY($1)", ids
    )
    rows = await wait_final(db, ids)
    assert {r["state"] for r in rows} == {"cancelled"}


async def test_a_job_frozen_under_a_frozen_tenant_can_be_cancelled(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    ids = [await submit(db, BURN, tenant="acme", cpu=Decimal("0.2")) for _ in range(2)]
    for job_id in ids:
        await wait_burning(cgroup_root, "acme", f"job-{job_id}")
    await db.execute("UPDATE scheduler.tenants SET frozen = true WHERE name = 'acme'")
    for job_id in ids:
        await wait_state(db, job_id, "frozen", timeout=5)
    pids = job_pids(cgroup_root, "acme", f"job-{ids[0]}")
    await set_desired(db, ids[0], "cancelled")
    [row] = await wait_final(db, [ids[0]])
    assert row["state"] == "cancelled"
    await wait_gone(pids)
    # The other job of the tenant stays frozen.
    assert await db.fetchval("SELECT state FROM scheduler.jobs WHERE id = $1", ids[1]) == "frozen"
    assert freezer_state(cgroup_root, "acme", f"job-{ids[1]}") == "FROZEN"
    await set_desired(db, ids[1], "cancelled")
    [row] = await wait_final(db, [ids[1]])
    assert row["state"] == "cancelled"


async def test_desired_state_set_while_the_agent_was_down_is_applied_at_start(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root)
    async with anyio.create_task_group() as tg:
        first = await start_agent(tg, settings)
        job_id = await submit(db, BURN, cpu=Decimal("0.2"))
        await wait_burning(cgroup_root, "default", f"job-{job_id}")
        first.stop()
    await set_desired(db, job_id, "frozen")
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        await wait_state(db, job_id, "frozen", timeout=10)
        assert freezer_state(cgroup_root, "default", f"job-{job_id}") == "FROZEN"
        await set_desired(db, job_id, "cancelled")
        [row] = await wait_final(db, [job_id])
        tg.cancel_scope.cancel()
    assert row["state"] == "cancelled"


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "scheduler.cli", *args, "--database-url", dsn], check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_freeze_thaw_cancel(
    dsn: str, db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    job_id = await submit(db, BURN, cpu=Decimal("0.2"))
    await wait_burning(cgroup_root, "default", f"job-{job_id}")
    code, out, err = await cli(dsn, "freeze", str(job_id))
    assert code == 0, err
    assert f"job {job_id}" in out
    await wait_state(db, job_id, "frozen", timeout=5)
    code, out, err = await cli(dsn, "thaw", str(job_id))
    assert code == 0, err
    await wait_state(db, job_id, "running", timeout=5)
    code, out, err = await cli(dsn, "cancel", str(job_id), "--json")
    assert code == 0, err
    assert '"desired_state": "cancelled"' in out
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "cancelled"
    code, out, err = await cli(dsn, "freeze", str(job_id))
    assert code == 1
    assert "already finished as cancelled" in err
    code, out, err = await cli(dsn, "cancel", "999999")
    assert code == 1
    assert "no job with id 999999" in err


async def test_tenant_limit_changes_reach_the_running_tenant_cgroup(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme')")
    job_id = await submit(db, ["sleep", "300"], tenant="acme", cpu=Decimal("0.2"))
    await wait_state(db, job_id, "running")
    cpu = cgroup_files.directory("cpu", cgroup_root, "acme")
    weight_file = "cpu.weight" if cgroup_files.pure_v2() else "cpu.shares"
    with anyio.fail_after(slow(10)):
        while not (cpu / weight_file).exists():
            await anyio.sleep(0.02)
    await db.execute(
        "UPDATE scheduler.tenants SET cpu_limit = 1.5, weight = 300, pids_limit = 77"
        " WHERE name = 'acme'"
    )
    pids = cgroup_files.pids_max_file(cgroup_root, "acme")
    with anyio.fail_after(slow(5)):
        while pids.read_text().strip() != "77":
            await anyio.sleep(0.02)
    assert cgroup_files.cpu_quota(cgroup_root, "acme") == (150000, 100000)
    # v1 shares are the weight scaled by 1024/100; v2 takes the weight itself.
    expected = "300" if cgroup_files.pure_v2() else "3072"
    assert (cpu / weight_file).read_text().strip() == expected
    await set_desired(db, job_id, "cancelled")
    await wait_final(db, [job_id])


async def test_a_thaw_requested_while_the_agent_was_down_is_applied_at_start(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    settings = agent_settings(dsn, state_dir, cgroup_root)
    async with anyio.create_task_group() as tg:
        first = await start_agent(tg, settings)
        job_id = await submit(db, BURN, cpu=Decimal("0.2"))
        await wait_burning(cgroup_root, "default", f"job-{job_id}")
        await set_desired(db, job_id, "frozen")
        await wait_state(db, job_id, "frozen", timeout=5)
        first.stop()
    await set_desired(db, job_id, "running")
    async with anyio.create_task_group() as tg:
        await start_agent(tg, settings)
        await wait_state(db, job_id, "running", timeout=10)
        assert freezer_state(cgroup_root, "default", f"job-{job_id}") == "THAWED"
        await set_desired(db, job_id, "cancelled")
        [row] = await wait_final(db, [job_id])
        tg.cancel_scope.cancel()
    assert row["state"] == "cancelled"


async def test_cli_tenants(dsn: str, db: asyncpg.Connection) -> None:
    code, out, err = await cli(dsn, "tenants", "add", "acme", "--cpu", "2", "--memory", "1G")
    assert code == 0, err
    assert out.startswith("tenant acme weight=100 cpu=2 memory=")
    code, out, err = await cli(
        dsn, "tenants", "add", "team", "--parent", "acme", "--weight", "300", "--io-read", "50M"
    )
    assert code == 0, err
    code, out, err = await cli(dsn, "tenants", "set", "acme", "--cpu", "none", "--max-running", "4")
    assert code == 0, err
    row = await db.fetchrow("SELECT * FROM scheduler.tenants WHERE name = 'acme'")
    assert row is not None
    assert row["cpu_limit"] is None
    assert row["max_running_jobs"] == 4
    assert row["memory_limit_bytes"] == 1024**3
    team = await db.fetchrow("SELECT * FROM scheduler.tenants WHERE name = 'team'")
    assert team is not None
    assert (team["parent"], team["weight"], team["io_read_bps"]) == ("acme", 300, 50 * 1024**2)
    code, out, err = await cli(dsn, "tenants", "freeze", "acme")
    assert code == 0, err
    assert "FROZEN" in out
    code, out, err = await cli(dsn, "tenants", "list")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    # The CLI is the operator: its freeze is an operator hold.
    assert lines["acme"].endswith("hold")
    assert lines["team"].split()[1] == "acme"
    code, out, err = await cli(dsn, "tenants", "thaw", "acme", "--json")
    assert code == 0, err
    assert '"frozen": false' in out
    # Refusals name the problem.
    code, out, err = await cli(dsn, "tenants", "set", "acme", "--parent", "team")
    assert code == 1
    assert "cycle" in err
    code, out, err = await cli(dsn, "tenants", "add", "Bad.Name")
    assert code == 1
    assert "tenant_name_format" in err
    code, out, err = await cli(dsn, "tenants", "freeze", "nobody")
    assert code == 1
    assert "no tenant named 'nobody'" in err


async def test_a_lost_notification_is_made_up_for_by_the_poll(
    db: asyncpg.Connection, fast_agent: AgentHandle, cgroup_root: str
) -> None:
    job_id = await submit(db, BURN, cpu=Decimal("0.2"))
    await wait_burning(cgroup_root, "default", f"job-{job_id}")
    # Triggers off for this one statement: no NOTIFY is sent (as if it had been lost).
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await set_desired(db, job_id, "frozen")
    await wait_state(db, job_id, "frozen", timeout=5)  # the agent polls every 0.5 s
    assert freezer_state(cgroup_root, "default", f"job-{job_id}") == "FROZEN"
    await set_desired(db, job_id, "cancelled")
    [row] = await wait_final(db, [job_id])
    assert row["state"] == "cancelled"
