"""The job store: the one place that submits, reads and waits for jobs (CLI and HTTP)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio
import asyncpg

from scheduler.db.queries import q
from scheduler.errors import ControlRefused, JobNotFound, SchedulerError, TenantNotFound
from scheduler.jobs import FINAL_STATES, DesiredState


class SubmitRefused(SchedulerError):
    """The database refused the job."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class JobRequest:
    """What a client asks for; every field but argv has the database's default."""

    argv: list[str]
    tenant: str = "default"
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    cpu: Decimal = Decimal(1)
    memory_bytes: int = 536870912
    pids_max: int = 1024
    timeout_seconds: Decimal | None = None
    priority: int = 0
    max_attempts: int = 1
    labels: dict[str, Any] = field(default_factory=dict)


def record_to_dict(row: asyncpg.Record) -> dict[str, Any]:
    """A job row as JSON-ready values (decimals as strings keep their exactness)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            out[key] = str(value)
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


async def submit(conn: asyncpg.Connection, request: JobRequest) -> asyncpg.Record:
    """Insert one job; the database's own checks produce the refusal messages."""
    try:
        row = await conn.fetchrow(
            q("insert_job"),
            request.tenant,
            request.name,
            request.argv,
            request.env,
            request.cwd,
            request.cpu,
            request.memory_bytes,
            request.pids_max,
            request.timeout_seconds,
            request.priority,
            request.max_attempts,
            request.labels,
        )
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise SubmitRefused(str(exc), getattr(exc, "column_name", None)) from exc
    assert row is not None
    return row


async def get(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_job"), job_id)
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return row


async def list_jobs(
    conn: asyncpg.Connection,
    *,
    tenant: str | None = None,
    state: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[asyncpg.Record]:
    return list(await conn.fetch(q("list_jobs"), tenant, state, before_id, limit))


async def wait(conn: asyncpg.Connection, job_id: int, *, poll: float = 1.0) -> asyncpg.Record:
    """Return the job once it reached a final state (woken by the agents' NOTIFY)."""
    done = anyio.Event()

    def _wake(*_: object) -> None:
        done.set()

    await conn.add_listener("scheduler_done", _wake)
    try:
        while True:
            row = await get(conn, job_id)
            if row["state"] in FINAL_STATES:
                return row
            with anyio.move_on_after(poll):
                await done.wait()
            done = anyio.Event()
    finally:
        await conn.remove_listener("scheduler_done", _wake)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


# -- steering jobs and tenants (CLI and HTTP) -------------------------------------------------

TENANT_FIELDS = (
    "parent",
    "cpu_limit",
    "memory_limit_bytes",
    "pids_limit",
    "max_running_jobs",
    "weight",
    "io_read_bps",
    "io_write_bps",
)


async def set_desired_state(
    conn: asyncpg.Connection, job_id: int, desired: DesiredState
) -> asyncpg.Record:
    """Ask for a job to run, be frozen or be cancelled; the agent running it reconciles.

    A queued job cancelled here is cancelled by the database itself; a finished job refuses.
    """
    row = await get(conn, job_id)
    if row["state"] in FINAL_STATES:
        raise ControlRefused(
            f"job {job_id} already finished as {row['state']}: it cannot be {_VERB[desired]}"
        )
    try:
        updated = await conn.fetchrow(q("set_desired_state"), job_id, desired)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ControlRefused(str(exc)) from exc
    if updated is None:
        raise JobNotFound(f"no job with id {job_id}")
    return updated


_VERB = {"running": "thawed", "frozen": "frozen", "cancelled": "cancelled"}


async def list_tenants(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every tenant with its limits and its count of active and queued jobs."""
    return list(await conn.fetch(q("list_tenants")))


async def get_tenant(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_tenant"), name)
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


async def add_tenant(conn: asyncpg.Connection, name: str, **fields: Any) -> asyncpg.Record:
    """Create a tenant; ``fields`` are columns of TENANT_FIELDS (the database checks values)."""
    columns = ["name", *_tenant_columns(fields)]
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    try:
        row = await conn.fetchrow(
            f"INSERT INTO scheduler.tenants ({', '.join(columns)}) VALUES ({params}) RETURNING *",
            name,
            *fields.values(),
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise ControlRefused(str(exc)) from exc
    assert row is not None
    return row


async def set_tenant(conn: asyncpg.Connection, name: str, **fields: Any) -> asyncpg.Record:
    """Change a tenant's parent or limits (None clears a limit); agents apply it on NOTIFY."""
    columns = _tenant_columns(fields)
    if not columns:
        raise ControlRefused("nothing to change: give at least one setting")
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    try:
        row = await conn.fetchrow(
            f"UPDATE scheduler.tenants SET {assignments} WHERE name = $1 RETURNING *",
            name,
            *fields.values(),
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise ControlRefused(str(exc)) from exc
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


async def set_tenant_frozen(conn: asyncpg.Connection, name: str, frozen: bool) -> asyncpg.Record:
    """Freeze (or thaw) a tenant's whole subtree: running jobs stop, queued jobs are held."""
    row = await conn.fetchrow(q("set_tenant_frozen"), name, frozen)
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


def _tenant_columns(fields: dict[str, Any]) -> list[str]:
    # Column names go into SQL text: only the known ones are accepted.
    unknown = sorted(set(fields) - set(TENANT_FIELDS))
    if unknown:
        raise ControlRefused(f"unknown tenant settings {unknown}: expected {TENANT_FIELDS}")
    return list(fields)
