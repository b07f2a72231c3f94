"""The tenants repository: list, read, create, change, freeze and thaw tenants (CLI and
HTTP alike); the database checks the values (limits, a child against its parent)."""

from __future__ import annotations

from typing import Any

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.db.refusals import refusal
from scheduler.errors import ControlRefused, TenantNotFound
from scheduler.names import NAME_SHAPE
from scheduler.requests import TENANT_FIELDS, TENANT_NAME


async def list_tenants(conn: Conn, *, job_counts: bool = True) -> list[asyncpg.Record]:
    """Every tenant by name with its limits; with ``job_counts``, its count of active and
    queued jobs too (active_jobs, queued_jobs)."""
    return list(await conn.fetch(q("list_tenants" if job_counts else "list_tenant_rows")))


async def get_tenant(conn: Conn, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_tenant"), name)
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


async def exists(conn: Conn, name: str) -> bool:
    return bool(await conn.fetchval(q("tenant_exists"), name))


async def act_as(conn: Conn, tenant: str) -> None:
    """Until the transaction ends, the database treats what this connection does as
    ``tenant``'s (its checks of a child's limits, operator holds), not as the session's own
    (migrations/0010). Outside a transaction it would last one statement: call it inside."""
    await conn.execute(q("act_as_tenant"), tenant)


async def add_tenant(conn: Conn, name: str, **fields: Any) -> asyncpg.Record:
    """Create a tenant; ``fields`` are columns of TENANT_FIELDS (the database checks values).

    A refusal is ControlRefused whose ``__cause__`` is the database's error (the HTTP API
    answers a name taken, an unknown parent and a failed check differently)."""
    if not TENANT_NAME.match(name):
        raise ControlRefused(
            f"{name!r} is not a valid tenant name (tenant_name_format): expected {NAME_SHAPE}"
        )
    columns = ["name", *_tenant_columns(fields)]
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    try:
        # Dynamic: the columns given (only the known ones, checked above) go into the text.
        row = await conn.fetchrow(
            f"INSERT INTO scheduler.tenants ({', '.join(columns)}) VALUES ({params}) RETURNING *",
            name,
            *fields.values(),
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise ControlRefused(refusal(exc)) from exc
    assert row is not None
    return row


async def set_tenant(conn: Conn, name: str, **fields: Any) -> asyncpg.Record:
    """Change a tenant's parent or limits (None clears a limit); agents apply it on NOTIFY."""
    columns = _tenant_columns(fields)
    if not columns:
        raise ControlRefused("nothing to change: give at least one setting")
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    try:
        # Dynamic as in add_tenant: only known column names reach the text.
        row = await conn.fetchrow(
            f"UPDATE scheduler.tenants SET {assignments} WHERE name = $1 RETURNING *",
            name,
            *fields.values(),
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise ControlRefused(refusal(exc)) from exc
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


async def set_tenant_frozen(conn: Conn, name: str, frozen: bool) -> asyncpg.Record:
    """Freeze (or thaw) a tenant's whole subtree: running jobs stop, queued jobs are held.
    A tenant's thaw of an operator's hold (see :func:`act_as`) is refused by the database
    with asyncpg's InsufficientPrivilegeError."""
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
