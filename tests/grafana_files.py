"""The repository's Grafana dashboards as data: their queries, and the text Grafana would send
for them once its variables and macros are substituted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
NAMES = ("overview", "tenants", "job", "billing")
PROMETHEUS = "prometheus"
POSTGRES = "grafana-postgresql-datasource"


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    kind: str  # PROMETHEUS or POSTGRES
    text: str


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return data


def dashboards() -> dict[str, dict[str, Any]]:
    return {name: load(name) for name in NAMES}


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(name: str, board: Mapping[str, Any]) -> Iterator[Query]:
    """Every PromQL expression and SQL statement of the dashboard's panels."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            kind = (target.get("datasource") or panel["datasource"])["type"]
            text = target["expr"] if kind == PROMETHEUS else target["rawSql"]
            yield Query(name, panel["title"], kind, text)


def variables(board: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def variable_query(variable: Mapping[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def prometheus_text(expr: str, values: Mapping[str, str], rate_interval: str) -> str:
    """``expr`` as Grafana sends it: variables as regexes or values, intervals as durations."""
    out = expr.replace("$__rate_interval", rate_interval)
    out = out.replace("$__interval", "15s").replace("$__range", "1h")
    return substitute(out, values)


def sql_text(sql: str, values: Mapping[str, str], start: datetime, end: datetime) -> str:
    """``sql`` as Grafana's Postgres data source sends it (macros expanded, variables quoted)."""
    frm, to = start.isoformat(), end.isoformat()
    out = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{frm}' AND '{to}'", sql)
    out = out.replace("$__timeFrom()", f"'{frm}'").replace("$__timeTo()", f"'{to}'")
    return substitute(out, values)


def substitute(text: str, values: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {text!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def referenced(text: str) -> set[str]:
    """Names of the dashboard variables ``text`` uses (Grafana's $__ macros excluded)."""
    return {
        a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", text) if not (a or b).startswith("__")
    }
