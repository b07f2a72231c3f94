"""Postgres roles for tenants: psql access confined to their own rows by row-level security."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from scheduler.errors import SqlAccessError

if TYPE_CHECKING:
    from scheduler.db.pool import Conn

ROLE_PREFIX = "tenant_"
# What one tenant's role may take of the database: sessions at once, and how long a
# statement or an idle transaction (which may hold row locks on the tenant's own jobs, which
# the agent then waits for) may last. Role defaults: a session may change its timeouts
# (Postgres lets any role SET them); the connection limit it cannot.
CONNECTION_LIMIT = 8
STATEMENT_TIMEOUT = "30s"
IDLE_IN_TRANSACTION_TIMEOUT = "60s"


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
    from scheduler.repos import roles, tenants

    if not 1 <= connection_limit <= 10_000:
        raise SqlAccessError(f"connection_limit must be in [1, 10000]: got {connection_limit}")
    role = role_name(tenant)
    password = secrets.token_urlsafe(24)
    async with conn.transaction():
        if not await tenants.exists(conn, tenant):
            raise SqlAccessError(f"unknown tenant {tenant!r}")
        # The role's name is safe in DDL: tenant names are [a-z0-9_-] (role_name above).
        await roles.put_login_role(
            conn,
            role,
            password,
            connection_limit=connection_limit,
            statement_timeout=STATEMENT_TIMEOUT,
            idle_in_transaction_timeout=IDLE_IN_TRANSACTION_TIMEOUT,
            member_of="scheduler_tenant",
        )
        await roles.map_to_tenant(conn, role, tenant)
    return role, password


async def revoke_sql(conn: Conn, tenant: str) -> bool:
    """Drop ``tenant``'s role; False if it had none."""
    from scheduler.repos import roles

    role = role_name(tenant)
    async with conn.transaction():
        deleted = await roles.unmap(conn, role)
        await roles.drop_if_exists(conn, role)
    return deleted
