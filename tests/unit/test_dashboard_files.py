"""The Grafana and deploy files as data: what Grafana and docker compose need to load them,
and the conventions every dashboard keeps (fixed uids, variables, units, $__rate_interval)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.grafana_files import (
    NAMES,
    POSTGRES,
    PROMETHEUS,
    ROOT,
    dashboards,
    panels,
    queries,
    referenced,
    variable_query,
    variables,
)

BOARDS = dashboards()
RANGE_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\s*\(")


def test_uids_are_fixed_unique_and_titles_set() -> None:
    uids = [b["uid"] for b in BOARDS.values()]
    assert uids == [f"scheduler-{name}" for name in NAMES]
    assert len(set(uids)) == len(uids)
    assert all(b["title"].startswith("Scheduler / ") for b in BOARDS.values())
    assert len({b["title"] for b in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("name", NAMES)
def test_panels_have_unique_ids_positions_and_units(name: str) -> None:
    board = BOARDS[name]
    ids = [p["id"] for p in panels(board)]
    assert ids and len(set(ids)) == len(ids)
    for panel in panels(board):
        assert panel["title"] and panel["targets"], panel
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{name}: panel {panel['title']!r} has no unit"


@pytest.mark.parametrize("name", NAMES)
def test_datasources_are_variables(name: str) -> None:
    board = BOARDS[name]
    defined = variables(board)
    sources = {v["query"]: n for n, v in defined.items() if v["type"] == "datasource"}
    assert sources, "a dashboard picks its data source through a variable"
    assert set(sources) <= {PROMETHEUS, POSTGRES}
    for panel in panels(board):
        for target in [panel, *panel["targets"]]:
            ds = target["datasource"]
            assert ds["uid"] == "${" + sources[ds["type"]] + "}", (panel["title"], ds)
    for variable in defined.values():
        if variable["type"] == "query":
            ds = variable["datasource"]
            assert ds["uid"] == "${" + sources[ds["type"]] + "}"


@pytest.mark.parametrize("name", ["overview", "tenants", "job"])
def test_tenant_and_node_come_from_label_values(name: str) -> None:
    defined = variables(BOARDS[name])
    for var in ("tenant", "node"):
        query = variable_query(defined[var])
        assert re.fullmatch(rf"label_values\(\w+(\{{.*\}})?, {var}\)", query), query
        assert defined[var]["includeAll"] and defined[var]["allValue"] == ".*"
    # node is a target label (deploy/prometheus sets it), so every per-node panel can filter.


def test_billing_reads_tenants_from_postgres() -> None:
    tenant = variables(BOARDS["billing"])["tenant"]
    assert tenant["datasource"]["type"] == POSTGRES
    # No allValue: "All" expands to the quoted list, which `tenant IN ($tenant)` needs.
    assert tenant["multi"] and tenant["includeAll"] and "allValue" not in tenant


@pytest.mark.parametrize("name", NAMES)
def test_queries_use_defined_variables_and_rate_interval(name: str) -> None:
    board = BOARDS[name]
    defined = set(variables(board))
    found = list(queries(name, board))
    assert found
    for q in found:
        assert referenced(q.text) <= defined, (q.panel, referenced(q.text) - defined)
        if q.kind == PROMETHEUS:
            windows = re.findall(r"\[([^\]]*)\]", q.text)
            assert all(w == "$__rate_interval" for w in windows), (q.panel, q.text)
            assert len(RANGE_FUNCTIONS.findall(q.text)) <= len(windows), q.text
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert referenced(variable_query(variable)) <= defined


def test_provisioning_matches_the_dashboards() -> None:
    prov = ROOT / "grafana" / "provisioning"
    sources = []
    for path in sorted((prov / "datasources").glob("*.yaml")):
        sources += yaml.safe_load(path.read_text())["datasources"]
    types = {s["type"]: s for s in sources}
    assert set(types) == {PROMETHEUS, POSTGRES}
    assert len({s["uid"] for s in sources}) == len(sources)
    assert types[POSTGRES]["user"] == "grafana_ro"  # deploy/postgres/grafana-readonly.sql
    assert "password" not in types[POSTGRES].get("jsonData", {})
    providers = yaml.safe_load((prov / "dashboards" / "scheduler.yaml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    assert mounts["../../grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["../../grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in {f"{n}.json" for n in NAMES}
    # Every ${VAR} the provisioning expands is set by compose.
    for path in sorted(prov.rglob("*.yaml")):
        for var in re.findall(r"\$\{(\w+)\}", path.read_text()):
            assert var in grafana["environment"], (path.name, var)


def test_compose_parses_and_mounts_existing_files() -> None:
    compose_dir = ROOT / "deploy" / "compose"
    compose: dict[str, Any] = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prometheus", "grafana"}  # the agent runs on the host
    for name, service in services.items():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (compose_dir / source).exists(), (name, volume)
            else:
                assert source in compose["volumes"], (name, volume)
    prom_args = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_args
    assert (compose_dir / "../prometheus/prometheus.yml").is_file()
    init = compose_dir / "initdb" / "10-grafana-readonly.sh"
    assert init.stat().st_mode & 0o111
    assert "/scheduler/grafana-readonly.sql" in init.read_text()
    assert (ROOT / "deploy" / "postgres" / "grafana-readonly.sql").is_file()
