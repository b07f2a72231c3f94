"""The package map of docs/architecture.md ("Package map"), checked on the source: which
scheduler package may import which. Every import counts, a function's lazy one and a
TYPE_CHECKING one too (a cycle through either still ties the packages together)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import scheduler

SOURCE = Path(scheduler.__file__).resolve().parent

# What the low layers may import of the scheduler (besides themselves): the drivers are
# plain kernel access, the plan types plain values.
ALLOWED = {
    "launchplan": set[str](),
    "errors": set[str](),
    "backoff": set[str](),
    "cgroups": {"errors", "launchplan", "backoff", "names", "timeconv"},
    # The facts defined once (issue 21 item 4): leaves everyone may import.
    "names": set[str](),
    "states": set[str](),
    "timeconv": set[str](),
    "jobdefaults": set[str](),
    "rundirs": set[str](),
    # Settings import nothing of runtime (issue 21 item 7): the sandbox's values are below.
    "sandboxrules": {"errors"},
    "config": {"errors", "labels", "names", "sandboxrules", "units"},
}


# What the upper layers must never import (docs/architecture.md, "Package map"): the CLI is a
# client that nothing depends on; the HTTP API is a client of the repositories, not of the
# agent's machinery; the repositories and the database layer know no caller; the runtime and
# accounting know neither the agent nor its clients. The agent imports `api` in one place, its
# composition root (agent/service.py), which serves the app.
CLIENTS = {"cli", "api"}
FORBIDDEN = {
    "api": {"cli", "agent", "runtime", "cgroups"},
    "repos": CLIENTS | {"agent", "runtime", "cgroups", "accounting", "config"},
    "db": CLIENTS | {"agent", "repos", "runtime", "cgroups", "accounting"},
    "runtime": CLIENTS | {"agent", "repos", "db", "accounting"},
    "accounting": CLIENTS | {"agent"},
    "policy": CLIENTS | {"agent", "repos", "db"},
    "agent": {"cli"},
}


def _package(module: str) -> str:
    """``scheduler.cgroups.v1`` -> ``cgroups``; ``scheduler.jobs`` -> ``jobs``."""
    return module.split(".")[1]


def _imports(path: Path, module: str) -> set[str]:
    """The scheduler modules ``path`` imports, relative imports resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("scheduler."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            if base == "scheduler":  # from scheduler import launchplan
                found.update(f"scheduler.{a.name}" for a in node.names)
            elif base.startswith("scheduler."):
                found.add(base)
    return found


def package_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    """Package -> the other scheduler packages its modules import."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(source.rglob("*.py")):
        module = ".".join(("scheduler", *path.relative_to(source).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        if module == "scheduler":
            continue
        own = _package(module)
        graph[own]
        graph[own].update(_package(m) for m in _imports(path, module) if _package(m) != own)
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_the_low_layers_import_only_what_the_map_allows() -> None:
    graph = package_graph()
    for package, allowed in ALLOWED.items():
        assert package in graph, package
        assert graph[package] <= allowed, (package, graph[package] - allowed)


def test_cgroups_and_runtime_are_not_in_a_cycle() -> None:
    graph = package_graph()
    assert "runtime" not in graph["cgroups"]
    for package in ("cgroups", "launchplan", "backoff"):
        for other in graph[package]:
            assert not _reaches(graph, other, package), f"{package} -> {other} -> ... -> {package}"


def test_the_walk_sees_lazy_relative_and_from_package_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, a relative one and ``from scheduler
    import x`` each count (else the map could be broken unseen)."""
    (tmp_path / "cgroups").mkdir()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "cgroups" / "a.py").write_text("def f():\n    from scheduler.runtime import spec\n")
    (tmp_path / "cgroups" / "b.py").write_text("from ..agent import runner\n")
    (tmp_path / "runtime" / "c.py").write_text("from scheduler import cgroups\n")
    graph = package_graph(tmp_path)
    assert graph["cgroups"] == {"runtime", "agent"}
    assert graph["runtime"] == {"cgroups"}
    assert _reaches(graph, "runtime", "cgroups") and _reaches(graph, "cgroups", "cgroups")


def test_the_upper_layers_never_import_their_callers() -> None:
    graph = package_graph()
    for package, never in FORBIDDEN.items():
        assert package in graph, package
        assert not graph[package] & never, (package, graph[package] & never)


def test_nothing_imports_the_cli() -> None:
    graph = package_graph()
    assert [p for p, deps in graph.items() if "cli" in deps and p != "cli"] == []


def test_only_the_composition_root_imports_the_api() -> None:
    """The agent serves the HTTP app; no other agent module reaches into the API."""
    importers = []
    for path in sorted((SOURCE / "agent").rglob("*.py")):
        module = ".".join(("scheduler", *path.relative_to(SOURCE).with_suffix("").parts))
        if any(_package(m) == "api" for m in _imports(path, module)):
            importers.append(path.name)
    assert importers == ["service.py"]
