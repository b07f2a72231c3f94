"""Facts defined once in Python and carried by the migrations: compared in a live catalogue.

Each migration is frozen once shipped, so a later one that changes a rule (a CHECK, a
trigger's regex, a column default) must be matched by the Python definition, and the other
way round; these tests read what the database enforces now, not the migration files.
"""

from __future__ import annotations

import re

import asyncpg
import pytest

from scheduler import jobdefaults, labels, names, states

# A regular-expression literal after ~ or !~ in a CHECK or a function body.
_REGEX = re.compile(r"!?~\s*'((?:[^']|'')*)'")

pytestmark = pytest.mark.anyio


async def _checks(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = $1::regclass AND contype = 'c'",
        table,
    )
    return {r["conname"]: r["def"] for r in rows}


async def _function_sources(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'scheduler'"
    )
    return {r["proname"]: r["prosrc"] for r in rows}


def _regexes(text: str) -> list[str]:
    return [m.replace("''", "'") for m in _REGEX.findall(text)]


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


async def test_name_rules_match_the_database(db: asyncpg.Connection) -> None:
    tenants = await _checks(db, "scheduler.tenants")
    assert _regexes(tenants["tenant_name_format"]) == [names.NAME_PATTERN]
    jobs = await _checks(db, "scheduler.jobs")
    image_rules = [r for d in jobs.values() if "image" in d for r in _regexes(d)]
    assert image_rules == [names.NAME_PATTERN]
    # Triggers check names too (jobs' tenant, schedules' name): every name-like regex any
    # function or CHECK of the schema holds is one of the two rules.
    found: dict[str, set[str]] = {}
    sources = await _function_sources(db)
    for where, text in [*sources.items(), *tenants.items(), *jobs.items()]:
        for rule in _regexes(text):
            if rule.startswith("^[a-z0-9]"):
                found.setdefault(rule, set()).add(where)
    assert set(found) == {names.NAME_PATTERN, names.SCHEDULE_NAME_PATTERN}, found
    schedules = [w for w, text in sources.items() if names.SCHEDULE_NAME_PATTERN in text]
    assert schedules, "no function checks schedule names"
    assert names.NAME.pattern == names.NAME_PATTERN
    assert names.SCHEDULE_NAME.pattern == names.SCHEDULE_NAME_PATTERN
    # And the database agrees with Python on the edges of the rule.
    for name in ("a", "a" * 63, "a" * 64, "A", "-a", "a.b", "a/b", "0_-"):
        by_db = await db.fetchval("SELECT $1 ~ $2", name, names.NAME_PATTERN)
        assert by_db == bool(names.NAME.match(name)), name


async def test_label_rules_match_the_database(db: asyncpg.Connection) -> None:
    source = (await _function_sources(db))["label_set_valid"]
    rules = _regexes(source)
    assert rules == [f"^{labels.KEY.pattern}$", f"^{labels.VALUE.pattern}$"]
    assert f"<= {labels.MAX_LABELS}" in source


async def test_job_states_match_the_database(db: asyncpg.Connection) -> None:
    jobs = await _checks(db, "scheduler.jobs")
    state = [d for d in jobs.values() if re.search(r"\(state\s*=|\bstate\s+IN|\(state\)", d)]
    desired = [d for d in jobs.values() if "desired_state" in d]
    assert len(state) == 1 and len(desired) == 1, jobs
    assert sorted(_quoted(state[0])) == sorted(states.JOB_STATES)
    assert sorted(_quoted(desired[0])) == sorted(states.DESIRED_STATES)
    assert set(states.JOB_STATES) > states.FINAL_STATES
    assert set(states.DESIRED_STATES) <= set(states.JOB_STATES)


async def test_job_defaults_match_the_column_defaults(db: asyncpg.Connection) -> None:
    for table, expected in (
        ("jobs", jobdefaults.JOB_COLUMNS),
        ("tenants", jobdefaults.TENANT_COLUMNS),
    ):
        rows = await db.fetch(
            "SELECT column_name, column_default, data_type FROM information_schema.columns"
            " WHERE table_schema = 'scheduler' AND table_name = $1",
            table,
        )
        defaults = {r["column_name"]: (r["column_default"], r["data_type"]) for r in rows}
        for column, value in expected.items():
            text, kind = defaults[column]
            assert text is not None, f"{table}.{column} has no default"
            # Evaluated by the database as the column's type, so 1 and Decimal(1) differ.
            got = await db.fetchval(f"SELECT ({text})::{kind}")  # catalogue text, not input
            assert got == value and type(got) is type(value), (table, column, text, value)
