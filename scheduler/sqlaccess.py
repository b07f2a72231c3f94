"""Postgres roles for tenants: psql access confined to their own rows by row-level security."""

from __future__ import annotations

import secrets

import asyncpg

from scheduler.db.pool import Conn
from scheduler.errors import SchedulerError

ROLE_PREFIX = "tenant_"
# What one tenant's role may take of the database: sessions at once, and how long a
# statement or an idle transaction (which may hold row locks on the tenant's own jobs, which
# the agent then waits for) may last. Role defaults: a session may change its timeouts
# (Postgres lets any role SET them); the connection limit it cannot.
CONNECTION_LIMIT = 8
STATEMENT_TIMEOUT = "30s"
IDLE_IN_TRANSACTION_TIMEOUT = "60s"


class SqlAccessError(SchedulerError):
    """The tenant's SQL role could not be set up."""


def role_name(tenant: str) -> str:
    """The Postgres role that speaks for ``tenant`` (fits Postgres' 63-byte names)."""
    name = ROLE_PREFIX + tenant
    if len(name) > 63:
        raise SqlAccessError(
            f"tenant name {tenant!r} is too long for a role name "
            f"(at most {63 - len(ROLE_PREFIX)} characters)"
        )
    return name


async def grant_sql(
    conn: Conn, tenant: str, *, connection_limit: int = CONNECTION_LIMIT
) -> tuple[str, str]:
    """Create (or reset the password of) ``tenant``'s login role; return role and password.

    The role is a member of ``scheduler_tenant`` (what tenants may do at all) and is mapped to
    its tenant in ``scheduler.tenant_roles``, which the row-level security policies read. It
    may hold ``connection_limit`` sessions, with a statement timeout and an idle-in-transaction
    timeout by default.
    """
    if not 1 <= connection_limit <= 10_000:
        raise SqlAccessError(f"connection_limit must be in [1, 10000]: got {connection_limit}")
    role = role_name(tenant)
    password = secrets.token_urlsafe(24)
    quoted = '"' + role.replace('"', '""') + '"'
    async with conn.transaction():
        if not await conn.fetchval("SELECT true FROM scheduler.tenants WHERE name = $1", tenant):
            raise SqlAccessError(f"unknown tenant {tenant!r}")
        exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        # Role names and passwords cannot be bind parameters in DDL: the name is checked
        # above (tenant names are [a-z0-9_-]) and the password is quoted as a literal.
        literal = await conn.fetchval("SELECT quote_literal($1)", password)
        try:
            await conn.execute(
                f"{verb} ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                f" NOBYPASSRLS CONNECTION LIMIT {int(connection_limit)} PASSWORD {literal}"
            )
            await conn.execute(f"ALTER ROLE {quoted} SET statement_timeout = '{STATEMENT_TIMEOUT}'")
            await conn.execute(
                f"ALTER ROLE {quoted} SET idle_in_transaction_session_timeout"
                f" = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
            )
            await conn.execute(f"GRANT scheduler_tenant TO {quoted}")
        except asyncpg.PostgresError as exc:
            raise SqlAccessError(f"cannot create role {role}: {exc}") from exc
        await conn.execute(
            "INSERT INTO scheduler.tenant_roles (role_name, tenant) VALUES ($1, $2)"
            " ON CONFLICT (role_name) DO UPDATE SET tenant = EXCLUDED.tenant",
            role,
            tenant,
        )
    return role, password


async def revoke_sql(conn: Conn, tenant: str) -> bool:
    """Drop ``tenant``'s role; False if it had none."""
    role = role_name(tenant)
    quoted = '"' + role.replace('"', '""') + '"'
    async with conn.transaction():
        deleted = await conn.fetchval(
            "DELETE FROM scheduler.tenant_roles WHERE role_name = $1 RETURNING true", role
        )
        if await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"DROP ROLE {quoted}")
    return bool(deleted)
