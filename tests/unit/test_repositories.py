"""The API and CLI side's data access (issue 21 item 3): the handlers and domain modules
reach Postgres only through scheduler/repos/, so none of them holds SQL text or calls a
connection's statement methods; the repositories' named blocks all exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import scheduler
from scheduler.db.queries import QUERIES

SOURCE = Path(scheduler.__file__).resolve().parent

# The modules this rule covers: the HTTP handlers (request bodies and the OpenAPI document
# hold no database access) and the domain modules the CLI and the API share.
COVERED = sorted(
    [
        *(p for p in (SOURCE / "api").glob("*.py") if not p.name.startswith("openapi")),
        *(SOURCE / name for name in ("budgets.py", "schedules.py", "sqlaccess.py")),
        *(SOURCE / name for name in ("requests.py", "presentation.py")),
    ]
)
STATEMENT_METHODS = {"fetch", "fetchrow", "fetchval", "execute", "executemany"}
# Upper-case keywords as statements write them (docstrings use lower-case English).
SQL_TEXT = re.compile(
    r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|WITH RECURSIVE)\b.*\b(FROM|SET|VALUES|AS)\b",
    re.DOTALL,
)


def _offences(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(SOURCE)}:{getattr(node, 'lineno', '?')}"
        method = (
            node.func.attr
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            else None
        )
        if method in STATEMENT_METHODS:
            found.append(f"{where}: .{method}(")
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and SQL_TEXT.search(text):
            found.append(f"{where}: SQL text {text[:40]!r}")
        if isinstance(node, ast.ImportFrom) and node.module == "scheduler.db.queries":
            found.append(f"{where}: imports the named statements")
    return found


def test_api_and_domain_modules_hold_no_sql_and_send_no_statement() -> None:
    assert len(COVERED) > 15  # the glob found the handlers
    offences = [o for path in COVERED for o in _offences(path)]
    assert offences == []


def test_every_statement_the_repositories_name_exists() -> None:
    names: set[str] = set()
    for path in (SOURCE / "repos").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "q"
            ):
                # Every name the argument may be (tenants.list_tenants picks one of two).
                names.update(
                    c.value
                    for c in ast.walk(node.args[0])
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
    assert {"list_tenants", "insert_job", "token_principal", "map_tenant_role"} <= names
    assert sorted(names - set(QUERIES)) == []
