"""The request limits (scheduler/api/body_limits.py) against the live catalogue of a migrated
database: every value the API accepts at its bounds is storable (column types, CHECKs), and
where a CHECK holds the same bound, the first value past it is refused by both, the CHECK by
its name. A migration or a constant changed alone fails here."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from scheduler.api import body_limits as lim
from scheduler.api.bodies import validate
from scheduler.api.problems import Problem
from scheduler.api.schemas import JobCreate, TenantCreate

pytestmark = pytest.mark.anyio

STEP = Decimal("0.001")

# (column, values the API takes at its bounds, first values past them, the CHECK refusing those)
JOB_BOUNDS: list[tuple[str, list[Any], list[Any], str]] = [
    ("cpu", [STEP, lim.CPU_MAX], [Decimal(0), lim.CPU_MAX + STEP], "job_cpu_range"),
    ("memory_bytes", [lim.MEMORY_MIN, lim.MEMORY_MAX], [lim.MEMORY_MIN - 1], "job_memory_positive"),
    ("pids_max", [1, lim.PIDS_MAX], [0], "job_pids_max_positive"),
    ("timeout_seconds", [STEP, lim.TIMEOUT_MAX], [Decimal(0)], "job_timeout_positive"),
    (
        "priority",
        [lim.PRIORITY_MIN, lim.PRIORITY_MAX],
        [lim.PRIORITY_MIN - 1, lim.PRIORITY_MAX + 1],
        "job_priority_range",
    ),
    ("max_attempts", [1, lim.ATTEMPTS_MAX], [0, lim.ATTEMPTS_MAX + 1], "job_max_attempts_range"),
    ("io_read_bps", [1, lim.IO_BPS_MAX], [0], "job_io_bps_positive"),
    ("io_write_bps", [1, lim.IO_BPS_MAX], [0], "job_io_bps_positive"),
    ("output_limit_bytes", [0, lim.OUTPUT_LIMIT_MAX], [-1], "job_output_limit_nonnegative"),
    (
        "kill_grace_seconds",
        [Decimal(0), lim.KILL_GRACE_MAX],
        [-STEP, lim.KILL_GRACE_MAX + STEP],
        "job_kill_grace_range",
    ),
]
TENANT_BOUNDS: list[tuple[str, list[Any], list[Any], str]] = [
    ("weight", [lim.WEIGHT_MIN, lim.WEIGHT_MAX], [0, lim.WEIGHT_MAX + 1], "tenant_weight_range"),
    (
        "max_running_jobs",
        [0, lim.MAX_RUNNING_JOBS_MAX],
        [-1],
        "tenant_max_running_jobs_nonnegative",
    ),
    ("cpu_limit", [STEP, lim.CPU_MAX], [Decimal(0)], "tenant_cpu_limit_positive"),
    ("memory_limit_bytes", [lim.MEMORY_MIN, lim.MEMORY_MAX], [], ""),
    ("pids_limit", [1, lim.PIDS_MAX], [0], "tenant_pids_limit_positive"),
    ("io_read_bps", [1, lim.IO_BPS_MAX], [0], "tenant_io_bps_positive"),
    ("output_limit_bytes", [0, lim.OUTPUT_LIMIT_MAX], [-1], "tenant_output_limit_nonnegative"),
]


def _api_takes(model: type[Any], body: dict[str, Any]) -> bool:
    try:
        validate(body, model)
    except Problem as exc:
        assert exc.status == 422
        return False
    return True


async def _store(conn: asyncpg.Connection, sql: str, *args: Any) -> str | None:
    """None when the row is stored (then rolled back), else what refused it: the CHECK's name,
    or "<column>: <message>" for a check_violation raised by a trigger that names the column
    (the friendlier messages of the jobs' BEFORE trigger run ahead of the CHECKs)."""
    try:
        async with conn.transaction():
            await conn.execute(sql, *args)
            raise _RolledBack
    except _RolledBack:
        return None
    except asyncpg.CheckViolationError as exc:
        return exc.constraint_name or f"{exc.column_name}: {exc}"


class _RolledBack(Exception):
    pass


@pytest.mark.parametrize(("column", "ok", "past", "check"), JOB_BOUNDS)
async def test_job_bounds_match_the_database(
    db: asyncpg.Connection, column: str, ok: list[Any], past: list[Any], check: str
) -> None:
    sql = f"INSERT INTO scheduler.jobs (argv, {column}) VALUES ('{{true}}', $1)"
    # The operator's cap on a job's pids (scheduler.isolation) at its own CHECK's highest.
    await db.execute("UPDATE scheduler.isolation SET job_pids_max = $1", lim.PIDS_MAX)
    assert (
        await _store(db, "UPDATE scheduler.isolation SET job_pids_max = $1", lim.PIDS_MAX + 1)
        == "isolation_job_pids_max_range"
    )
    for value in ok:
        assert _api_takes(JobCreate, {"argv": ["true"], column: value}), (column, value)
        assert await _store(db, sql, value) is None, (column, value)
    for value in past:
        assert not _api_takes(JobCreate, {"argv": ["true"], column: value}), (column, value)
        refused = await _store(db, sql, value)
        assert refused is not None, (column, value)
        assert refused == check or refused.startswith(f"{column}: "), refused


@pytest.mark.parametrize(("column", "ok", "past", "check"), TENANT_BOUNDS)
async def test_tenant_bounds_match_the_database(
    db: asyncpg.Connection, column: str, ok: list[Any], past: list[Any], check: str
) -> None:
    sql = f"INSERT INTO scheduler.tenants (name, {column}) VALUES ('probe', $1)"
    for value in ok:
        assert _api_takes(TenantCreate, {"name": "probe", column: value}), (column, value)
        assert await _store(db, sql, value) is None, (column, value)
    for value in past:
        assert not _api_takes(TenantCreate, {"name": "probe", column: value}), (column, value)
        refused = await _store(db, sql, value)
        assert refused is not None, (column, value)
        assert refused == check or refused.startswith(f"{column}: "), refused


async def test_the_other_limits_are_the_databases(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT scheduler.depends_on_max()") == lim.MAX_DEPENDS_ON
    # An array's index is an int4 column: its range is the API's.
    column_type = await db.fetchval(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'scheduler'"
        " AND table_name = 'jobs' AND column_name = 'array_index'"
    )
    assert column_type == "integer"
    assert await db.fetchval("SELECT $1::int4", lim.INT4_MAX) == lim.INT4_MAX
    with pytest.raises(asyncpg.DataError):
        await db.fetchval("SELECT $1::int4", lim.INT4_MAX + 1)
    key_check = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'idempotency_key_length'"
    )
    assert f"<= {lim.IDEMPOTENCY_KEY_MAX})" in key_check


async def test_label_bounds_are_migration_0018s(db: asyncpg.Connection) -> None:
    async def bounded(labels: dict[str, Any]) -> bool:
        return bool(await db.fetchval("SELECT scheduler.labels_bounded($1::jsonb)", labels))

    await db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    cases: list[dict[str, Any]] = [
        {f"k{i}": 1 for i in range(lim.LABEL_KEYS_MAX)},
        {f"k{i}": 1 for i in range(lim.LABEL_KEYS_MAX + 1)},
        {"k" * lim.LABEL_KEY_BYTES: 1},
        {"k" * (lim.LABEL_KEY_BYTES + 1): 1},
        {"k": "v" * (lim.LABELS_BYTES - 20)},
        {"k": "v" * (lim.LABELS_BYTES - 9)},
        {"k": "v" * lim.LABELS_BYTES},
    ]
    for labels in cases:
        api = _api_takes(JobCreate, {"argv": ["true"], "labels": labels})
        assert api == await bounded(labels), {k[:10]: str(v)[:10] for k, v in labels.items()}
