"""Where SQL may live (issue 21, item 3): statements are named blocks of db/queries.sql, sent
by the repositories (scheduler/repos/); nothing else above scheduler/db/ calls asyncpg's
statement methods, names a named block, or holds a statement's text. Checked on the source's
syntax tree, every module of scheduler/ but db/ and repos/."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

import scheduler

SOURCE = Path(scheduler.__file__).resolve().parent

# asyncpg's methods that send a statement (Connection, Pool and PoolConnectionProxy alike),
# LISTEN and UNLISTEN included (the channels are named in repos/listen.py).
STATEMENT_METHODS = frozenset(
    {"fetch", "fetchrow", "fetchval", "execute", "executemany", "add_listener", "remove_listener"}
)
# A string that is a statement by itself (upper-case keywords, as queries.sql writes them).
STATEMENT_TEXT = re.compile(
    r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|WITH\s+\w+\s+AS|LOCK\s+TABLE"
    r"|LISTEN|UNLISTEN|NOTIFY|CREATE|ALTER|DROP|TRUNCATE|COPY)\b"
)

# Modules allowed to send statements themselves: none. Every statement above scheduler/db/ is
# a repository's (scheduler/repos/).
ALLOWED = frozenset[str]()


def _modules(source: Path = SOURCE) -> list[Path]:
    skip = (source / "db", source / "repos")
    return [
        p
        for p in sorted(source.rglob("*.py"))
        if not p.is_relative_to(skip[0]) and not p.is_relative_to(skip[1])
    ]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (prose may quote SQL)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def violations(path: Path) -> list[str]:
    """Each place in ``path`` that sends or holds SQL, as ``line: what``."""
    tree = ast.parse(path.read_text(), str(path))
    prose = _docstrings(tree)
    # Parts of an f-string are messages (an operator's hint may show a statement to type);
    # a statement sent from an f-string is caught at its call.
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            prose.update(id(v) for v in node.values)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and (
                func.attr in STATEMENT_METHODS or func.attr.startswith("copy_")
            ):
                found.append(f"{node.lineno}: .{func.attr}() call")
            elif isinstance(func, ast.Name) and func.id == "q":
                found.append(f"{node.lineno}: q() call (a named block outside the repositories)")
        elif isinstance(node, ast.ImportFrom) and node.module == "scheduler.db.queries":
            found.append(f"{node.lineno}: imports scheduler.db.queries")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and STATEMENT_TEXT.match(node.value)
        ):
            found.append(f"{node.lineno}: SQL text {node.value[:40]!r}")
    return found


def _name(path: Path) -> str:
    return path.relative_to(SOURCE).as_posix()


def test_no_sql_outside_the_repositories() -> None:
    bad = {
        _name(p): found for p in _modules() if _name(p) not in ALLOWED and (found := violations(p))
    }
    assert not bad, f"SQL outside scheduler/repos and scheduler/db: {bad}"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("await pool.fetch(q('x'), 1)", [".fetch() call", "q() call"]),
        ("await conn.executemany(s, rows)", [".executemany() call"]),
        ("await conn.add_listener('scheduler_jobs', f)", [".add_listener() call"]),
        ("await conn.copy_records_to_table('t', records=r)", [".copy_records_to_table() call"]),
        ("s = 'SELECT 1'", ["SQL text"]),
        ("from scheduler.db.queries import q", ["imports scheduler.db.queries"]),
        ("def f():\n    '''SELECT is quoted in prose.'''", []),
        ("raise E(f'INSERT INTO t VALUES ({v})')", []),
        ("from scheduler.repos import claims\nawait claims.claim_jobs(pool, 'n', 1)", []),
    ],
)
def test_the_check_sees_each_kind(tmp_path: Path, code: str, expected: list[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text("async def g():\n" + textwrap.indent(code, "    ") + "\n")
    found = violations(path)
    assert len(found) == len(expected), found
    for what in expected:
        assert any(what in line for line in found), (what, found)
