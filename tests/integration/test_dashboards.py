"""The dashboards and deploy files against the real thing: Debian's Prometheus (configured by
deploy/prometheus) scrapes a live agent that ran jobs for several tenants and answers every
PromQL expression of every dashboard; every SQL statement runs on the real schema as Grafana's
read-only role, and the billing dashboard's cost equals what `scheduler billing export` bills."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
import yaml

from scheduler.accounting.billing import export
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from tests.conftest import agent_settings, slow, start_agent
from tests.grafana_files import (
    NAMES,
    POSTGRES,
    PROMETHEUS,
    ROOT,
    dashboards,
    prometheus_text,
    queries,
    sql_text,
    variable_query,
    variables,
)
from tests.integration.test_agent import submit, wait_final, wait_state

FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.1}
DEPLOY = ROOT / "deploy"
READONLY_SQL = DEPLOY / "postgres" / "grafana-readonly.sql"
BUSY = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Debian's prometheus package is not installed (.ci/run installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """A real Prometheus on loopback, configured from deploy/prometheus with one target."""

    def __init__(self, base: Path, target: str) -> None:
        config: dict[str, Any] = yaml.safe_load(
            (DEPLOY / "prometheus" / "prometheus.yml").read_text()
        )
        # Fast enough for a test: several scrapes (and rule evaluations) within seconds.
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "scheduler")
        # No node label on the target: deploy's relabelling derives it from the address.
        job["static_configs"] = [{"targets": [target]}]
        for rules in config.get("rule_files", []):
            shutil.copy(DEPLOY / "prometheus" / rules, base / rules)
        (base / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (base / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={base / 'prometheus.yml'}",
                f"--storage.tsdb.path={base / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            with anyio.fail_after(slow(30)):
                while True:
                    assert self.process.poll() is None, "prometheus exited; see its log"
                    try:
                        if (await client.get("/-/ready")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)

    async def api(self, path: str, **params: str | list[str]) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sched-prom-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def grafana_regex(value: str) -> str:
    """How Grafana writes one selected value of a multi-value variable into PromQL."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


async def label_values(prom: Prometheus, query: str) -> list[str]:
    """Grafana's label_values(selector, label) through the same HTTP API it uses."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    values: list[str] = await prom.api(
        f"label/{match.group(2)}/values", **{"match[]": match.group(1)}
    )
    return values


async def check_prometheus_dashboards(prom: Prometheus, running: int) -> int:
    """Evaluate every PromQL expression, with "All" and with one value selected; return count."""
    boards = dashboards()
    evaluated = 0
    for name in NAMES:
        board = boards[name]
        defined = variables(board)
        all_values: dict[str, str] = {v: ".*" for v in ("tenant", "node") if v in defined}
        all_values |= {"datasource": "scheduler-prometheus", "pg": "scheduler-postgres"}
        all_values["job_id"] = str(running)
        # The variables' own queries list what a user picks from.
        for var in ("node", "tenant", "job_id"):
            if var in defined and defined[var]["datasource"]["type"] == PROMETHEUS:
                query = prometheus_text(variable_query(defined[var]), all_values, "1m")
                assert await label_values(prom, query), (name, var, query)
        if "node" in defined:
            nodes = await label_values(prom, 'label_values(up{job="scheduler"}, node)')
            assert nodes == [
                "127.0.0.1"
            ]  # derived from the target's address by deploy's relabelling
            tenants = await label_values(prom, "label_values(scheduler_tenant_jobs, tenant)")
            assert {"acme", "zeta"} <= set(tenants)
        one = all_values | {"tenant": grafana_regex("acme"), "node": grafana_regex("127.0.0.1")}
        for q in queries(name, board):
            if q.kind != PROMETHEUS:
                continue
            for values in (all_values, one):
                expr = prometheus_text(q.text, values, "1m")
                result = await prom.query(expr)
                assert result, f"{name} / {q.panel}: no data for {expr}"
                evaluated += 1
    return evaluated


async def check_sql(
    dsn: str, readonly_dsn: str, running: int
) -> dict[tuple[str, str, str], Decimal]:
    """Run every SQL statement as grafana_ro; return the billing cost table's rows."""
    start = datetime.now(UTC) - timedelta(days=1)
    end = datetime.now(UTC) + timedelta(hours=1)
    values = {"tenant": "'acme','zeta'", "job_id": str(running), "pg": "scheduler-postgres"}
    conn = await asyncpg.connect(readonly_dsn)
    costs: dict[tuple[str, str, str], Decimal] = {}
    try:
        boards = dashboards()
        for name in NAMES:
            defined = variables(boards[name])
            for var in defined.values():
                if var["type"] == "query" and var["datasource"]["type"] == POSTGRES:
                    names = await conn.fetch(variable_query(var))
                    assert {"acme", "zeta"} <= {r[0] for r in names}
            for q in queries(name, boards[name]):
                if q.kind != POSTGRES:
                    continue
                rows = await conn.fetch(sql_text(q.text, values, start, end))
                assert rows, f"{name} / {q.panel}: no rows"
                if q.panel == "Cost in the range":
                    costs = {(r["tenant"], r["resource"], r["currency"]): r["cost"] for r in rows}
                if q.panel == "Usage rows without a rate":
                    assert rows[0]["rows"] == 0
                if q.panel == "Job record":
                    assert rows[0]["id"] == running and rows[0]["state"] == "failed"
                if q.panel == "Billing rows":
                    assert rows[-1]["final"] and len(rows) >= 2
        # Grafana's role reads and never writes.
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("INSERT INTO scheduler.rates (resource, price) VALUES ('io_gib', 0)")
    finally:
        await conn.close()
    # What the export bills for the same window (each line rounded to 10 places).
    admin = await asyncpg.connect(dsn)
    try:
        doc = json.loads(await export(admin, start=start, end=end, fmt="json"))
    finally:
        await admin.close()
    billed: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    lines: dict[tuple[str, str, str], int] = defaultdict(int)
    for line in doc["lines"]:
        key = (line["tenant"], line["resource"], line["currency"])
        billed[key] += Decimal(line["cost"])
        lines[key] += 1
    # The export leaves out lines of zero quantity (io on a v1 host without throttle rules).
    assert set(billed) <= set(costs)
    for key, cost in costs.items():
        assert abs(cost - billed[key]) <= lines[key] * Decimal("0.5e-10"), key
    rates = {
        line["unit_price"]
        for line in doc["lines"]
        if line["tenant"] == "acme" and line["resource"] == "cpu_second"
    }
    assert rates == {"0.00002", "0.5"}  # the dashboard matched a rate change mid-hour
    return costs


@needs_prometheus
@pytest.mark.anyio
async def test_every_dashboard_query_returns_data(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    prometheus_dir: Path,
) -> None:
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ('acme'), ('zeta')")
    # A budget, for the spend-against-budget panel (never reached here).
    await db.execute(
        "UPDATE scheduler.tenants SET budget = 1000000, budget_currency = 'USD' WHERE name = 'acme'"
    )
    await db.execute(READONLY_SQL.read_text())
    settings = agent_settings(dsn, state_dir, cgroup_root, **FAST)
    async with anyio.create_task_group() as tg:
        agent = await start_agent(tg, settings)
        assert agent.ready.http is not None
        prom = Prometheus(prometheus_dir, agent.ready.http)
        try:
            await prom.ready()
            done = [
                await submit(db, ["sh", "-c", f"{BUSY}; sleep 0.5"], tenant="acme"),
                await submit(db, ["sh", "-c", BUSY], tenant="zeta"),
                await submit(db, ["sh", "-c", "exit 3"], tenant="zeta"),
                *[await submit(db, ["true"], tenant="acme") for _ in range(3)],
            ]
            running = await submit(db, ["sleep", "60"], tenant="acme")
            other = await submit(db, ["sleep", "60"], tenant="zeta")
            held = await submit(db, ["sleep", "60"], tenant="zeta", desired_state="frozen")
            await wait_final(db, done)
            await wait_state(db, running, "running")
            await wait_state(db, other, "running")
            # Until Prometheus holds a few scrapes of the final picture.
            with anyio.fail_after(slow(30)):
                while not await prom.query(
                    f'count_over_time(scheduler_queue_depth{{tenant="zeta"}}[1m]) >= 3'
                    f' and on () count_over_time(scheduler_job_memory_bytes{{job_id="{running}"}}[1m]) >= 3'
                ):
                    await anyio.sleep(0.5)
            evaluated = await check_prometheus_dashboards(prom, running)
            assert evaluated >= 40
            # deploy's alerting rules load and evaluate.
            groups = (await prom.api("rules"))["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) >= 4 and all(r["health"] == "ok" for r in rules), rules
        finally:
            prom.stop()
        # End the sleeping jobs as an operator would (SIGKILL in their cgroups) and cancel
        # the held one; the agent records their closing rows.
        driver = open_driver(cgroup_root)
        for tenant, job_id in (("acme", running), ("zeta", other)):
            await anyio.to_thread.run_sync(driver.kill, CgroupPath((tenant, f"job-{job_id}")))
        await db.execute(
            "UPDATE scheduler.jobs SET desired_state = 'cancelled' WHERE id = $1", held
        )
        await wait_final(db, [running, other, held])
        tg.cancel_scope.cancel()

    # Rates as operators write them, one of them starting in the middle of acme's rows, so a
    # dashboard that priced whole hours or days would disagree with the export.
    ends = await db.fetch(
        "SELECT period_end FROM scheduler.usage WHERE tenant = 'acme' ORDER BY period_end"
    )
    assert len(ends) >= 4
    await db.execute(
        """INSERT INTO scheduler.rates (resource, tenant, price, currency, valid_from) VALUES
           ('cpu_second', NULL, 0.0001, 'USD', '-infinity'),
           ('memory_gib_hour', NULL, 0.005, 'USD', '-infinity'),
           ('io_gib', NULL, 0.02, 'USD', '-infinity'),
           ('cpu_second', 'acme', 0.00002, 'USD', '-infinity'),
           ('cpu_second', 'acme', 0.5, 'USD', $1)""",
        ends[len(ends) // 2]["period_end"],
    )
    readonly = re.sub(r"postgresql://[^@/]*@", "postgresql://grafana_ro@", dsn)
    assert "grafana_ro@" in readonly
    costs = await check_sql(dsn, readonly, running=running)
    assert costs[("acme", "cpu_second", "USD")] > 0


@needs_prometheus
def test_promtool_accepts_the_prometheus_config_and_rules() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for rules in yaml.safe_load(config.read_text())["rule_files"]:
        result = subprocess.run(
            ["promtool", "check", "rules", str(config.parent / rules)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@needs_prometheus
def test_budget_alerts_fire_at_80_and_100_percent() -> None:
    # promtool's own rule tests (deploy/prometheus/scheduler-alerts.test.yml).
    tests = DEPLOY / "prometheus" / "scheduler-alerts.test.yml"
    result = subprocess.run(
        ["promtool", "test", "rules", tests.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=tests.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = DEPLOY / "systemd" / "scheduler.service"
    if not unit.is_file():
        pytest.skip("deploy/systemd/scheduler.service is not in this checkout")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names the installed path (/opt/scheduler); verify it against this checkout's.
    text = unit.read_text().replace(
        "/opt/scheduler/.venv/bin/scheduler", str(Path(sys.executable).parent / "scheduler")
    )
    (tmp_path / "scheduler.service").write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "scheduler.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.anyio
async def test_grafana_role_reads_later_tables_and_writes_nothing(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(READONLY_SQL.read_text())
    await db.execute(READONLY_SQL.read_text())  # idempotent: safe to re-run after upgrades
    # A table of a later migration, created by the same (migrating) role.
    await db.execute("CREATE TABLE scheduler.later (x int); INSERT INTO scheduler.later VALUES (1)")
    conn = await asyncpg.connect(re.sub(r"postgresql://[^@/]*@", "postgresql://grafana_ro@", dsn))
    try:
        assert await conn.fetchval("SELECT x FROM scheduler.later") == 1
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO scheduler.later VALUES (2)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("BEGIN READ WRITE; INSERT INTO scheduler.later VALUES (2)")
    finally:
        await conn.close()
