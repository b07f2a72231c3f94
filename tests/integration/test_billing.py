"""Billing on real usage: the export CLI (csv, json, FOCUS; byte-identical reruns), the
rollup views, and `billing check` finding an injected discrepancy."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.conftest import agent_settings, start_agent, write_as_agent
from tests.integration.test_agent import submit, wait_final

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    # These tests stage job states by hand, as only the agent may write them.
    await write_as_agent(db)


FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.1}
GIB = 1024**3


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def run_jobs(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> list[int]:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme'), ('zeta')")
    async with anyio.create_task_group() as tg:
        await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root, **FAST))
        busy = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 0.5"
        ids = [
            await submit(db, ["sh", "-c", busy], tenant="acme", name="busy"),
            await submit(db, ["sh", "-c", busy], tenant="zeta"),
            *[await submit(db, ["true"], tenant="acme") for _ in range(5)],
        ]
        await wait_final(db, ids)
        tg.cancel_scope.cancel()
    return ids


async def test_export_prices_real_usage_identically_every_time(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    ids = await run_jobs(dsn, db, state_dir, cgroup_root)
    await db.execute(
        """INSERT INTO scheduler.rates (resource, tenant, price, currency) VALUES
           ('cpu_second', NULL, 0.0001, 'USD'), ('cpu_second', 'acme', 0.00002, 'USD'),
           ('memory_gib_hour', NULL, 0.005, 'USD'), ('io_gib', NULL, 0.02, 'USD')"""
    )
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    end = start + timedelta(hours=2)
    window = ["--database-url", dsn, "--from", start.isoformat(), "--to", end.isoformat()]
    outputs = {}
    for fmt in ("csv", "json", "focus"):
        first = cli("billing", "export", *window, "--format", fmt)
        assert first.returncode == 0, first.stderr
        again = cli("billing", "export", *window, "--format", fmt)
        assert again.stdout == first.stdout  # byte-identical
        outputs[fmt] = first.stdout
    doc = json.loads(outputs["json"])
    lines = doc["lines"]
    # Every cpu second billed is priced once, at the tenant's rate where it has one.
    usage = await db.fetch(
        "SELECT tenant, sum(cpu_seconds) AS cpu, sum(memory_byte_seconds) AS mem "
        "FROM scheduler.usage WHERE job_id = ANY($1) GROUP BY tenant",
        ids,
    )
    cpu = {u["tenant"]: u["cpu"] for u in usage}
    for tenant in ("acme", "zeta"):
        exported = sum(
            Decimal(ln["consumed_quantity"])
            for ln in lines
            if ln["tenant"] == tenant and ln["resource"] == "cpu_second"
        )
        assert exported == cpu[tenant]
    assert {
        ln["unit_price"]
        for ln in lines
        if ln["tenant"] == "acme" and ln["resource"] == "cpu_second"
    } == {"0.00002"}
    assert {
        ln["unit_price"]
        for ln in lines
        if ln["tenant"] == "zeta" and ln["resource"] == "cpu_second"
    } == {"0.0001"}
    total = sum(Decimal(ln["cost"]) for ln in lines)
    assert Decimal(doc["totals"]["USD"]) == total > 0
    focus = list(csv.DictReader(io.StringIO(outputs["focus"])))
    assert len(focus) == len(lines)
    assert sum(Decimal(r["BilledCost"]) for r in focus) == total
    assert {r["SubAccountId"] for r in focus} == {"acme", "zeta"}
    assert {r["ResourceId"] for r in focus} <= {str(i) for i in ids}
    only = cli("billing", "export", *window, "--format", "csv", "--tenant", "zeta")
    assert {r["tenant"] for r in csv.DictReader(io.StringIO(only.stdout))} == {"zeta"}
    # The rollups Grafana reads add up to the same rows.
    hourly = await db.fetch('SELECT "time", tenant, cpu_seconds, jobs FROM scheduler.usage_hourly')
    daily = await db.fetch('SELECT "time", tenant, cpu_seconds FROM scheduler.usage_daily')
    assert sum(h["cpu_seconds"] for h in hourly) == sum(cpu.values())
    assert sum(d["cpu_seconds"] for d in daily) == sum(cpu.values())
    assert all(h["time"].minute == 0 and h["time"].second == 0 for h in hourly)
    assert sum(h["jobs"] for h in hourly if h["tenant"] == "acme") >= 6


async def test_export_without_a_rate_names_what_is_missing(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    await run_jobs(dsn, db, state_dir, cgroup_root)
    start = datetime.now(UTC) - timedelta(hours=1)
    result = cli(
        "billing",
        "export",
        "--database-url",
        dsn,
        "--from",
        start.isoformat(),
        "--to",
        (start + timedelta(hours=2)).isoformat(),
    )
    assert result.returncode == 1
    assert "no rate for cpu_second of tenant" in result.stderr
    bad = cli(
        "billing", "export", "--database-url", dsn, "--from", "2026-11-02", "--to", "2026-11-01"
    )
    assert bad.returncode == 1 and "must be after --from" in bad.stderr
    nobody = cli(
        "billing",
        "export",
        "--database-url",
        dsn,
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02",
        "--tenant",
        "nobody",
    )
    assert nobody.returncode == 1 and "unknown tenant 'nobody'" in nobody.stderr
    typo = cli("billing", "export", "--database-url", dsn, "--from", "soon", "--to", "2026-11-01")
    assert typo.returncode == 2 and "is not a date or time" in typo.stderr


async def test_check_proves_the_books_and_finds_an_injected_discrepancy(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    ids = await run_jobs(dsn, db, state_dir, cgroup_root)
    args = [
        "billing",
        "check",
        "--database-url",
        dsn,
        "--cgroup-root",
        cgroup_root,
        "--node-name",
        "test-node",
    ]
    ok = cli(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"checked {len(ids)} finished jobs: the books add up" in ok.stderr
    # Jobs are updatable (usage is append-only): make one job's totals disagree with its rows.
    await db.execute(
        "UPDATE scheduler.jobs SET cpu_seconds = cpu_seconds + 0.000000001 WHERE id = $1", ids[0]
    )
    bad = cli(*args, "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["jobs_checked"] == len(ids)
    assert len(report["discrepancies"]) == 1
    assert report["discrepancies"][0].startswith(f"job {ids[0]}: cpu_seconds: rows sum to ")
    # A window that excludes every job checks nothing and passes.
    past = cli(*args, "--from", "2000-01-01", "--to", "2000-01-02")
    assert past.returncode == 0
    assert "checked 0 finished jobs" in past.stderr
    # A row billing cpu the tenant's cgroup never counted is caught by the kernel check.
    await db.execute(
        """INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,
               period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,
               io_write_bytes)
           VALUES ($1, 1000, 1, 'zeta', 'test-node', now(), now(), 1000, 0, 0, 0, 0)""",
        ids[1],
    )
    forged = cli(*args, "--from", "2000-01-01", "--to", "2000-01-02")
    assert forged.returncode == 1
    assert "tenant zeta: billed " in forged.stdout
    assert "more than its cgroup counted" in forged.stdout
    skipped = cli(*args, "--from", "2000-01-01", "--to", "2000-01-02", "--no-cgroups")
    assert skipped.returncode == 0


async def test_check_fails_on_a_cgroup_root_it_cannot_find_and_reads_the_unit_env_file(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    ids = await run_jobs(dsn, db, state_dir, cgroup_root)
    base = ["billing", "check", "--database-url", dsn, "--node-name", "test-node"]
    missing = cli(*base, "--cgroup-root", f"{cgroup_root}-absent")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert f"{cgroup_root}-absent" in missing.stdout and "not found" in missing.stdout
    # The agent unit's environment file names the root when no flag or variable does.
    env_file = state_dir / "scheduler.env"
    env_file.write_text(f"# the unit's settings\nSCHEDULER_CGROUP_ROOT='{cgroup_root}'\n")
    from_file = cli(*base, "--env-file", str(env_file))
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert f"checked {len(ids)} finished jobs: the books add up" in from_file.stderr
    # A flag still wins over the file.
    flag = cli(*base, "--env-file", str(env_file), "--cgroup-root", f"{cgroup_root}-absent")
    assert flag.returncode == 1 and "not found" in flag.stdout
    # An env file that is not one is an error, not ignored.
    env_file.write_text("SCHEDULER_CGROUP_ROOT\n")
    garbled = cli(*base, "--env-file", str(env_file))
    assert garbled.returncode == 1 and "not a KEY=VALUE line" in garbled.stderr
