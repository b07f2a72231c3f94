"""The tenant SQL roles repository: Postgres login roles mapped to tenants (the row-level
security policies read the map). Role DDL takes no bind parameters, so its text is built
here from a role name the caller checked and quoted; nothing else writes such text."""

from __future__ import annotations

import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.errors import SqlAccessError


def _quoted(role: str) -> str:
    return '"' + role.replace('"', '""') + '"'


async def exists(conn: Conn, role: str) -> bool:
    return bool(await conn.fetchval(q("role_exists"), role))


async def put_login_role(
    conn: Conn,
    role: str,
    password: str,
    *,
    connection_limit: int,
    statement_timeout: str,
    idle_in_transaction_timeout: str,
    member_of: str,
) -> None:
    """Create ``role`` (or reset an existing one) as a login role with no privileges of its
    own but ``member_of``'s, at most ``connection_limit`` sessions and the timeouts as its
    defaults. Run it in a transaction (the caller's) so a failure leaves no half-made role.
    SqlAccessError when Postgres refuses."""
    quoted = _quoted(role)
    verb = "ALTER" if await exists(conn, role) else "CREATE"
    # The password is quoted as a literal by the server (no bind parameters in DDL).
    literal = await conn.fetchval(q("quote_literal"), password)
    try:
        await conn.execute(
            f"{verb} ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            f" NOBYPASSRLS CONNECTION LIMIT {int(connection_limit)} PASSWORD {literal}"
        )
        await conn.execute(f"ALTER ROLE {quoted} SET statement_timeout = '{statement_timeout}'")
        await conn.execute(
            f"ALTER ROLE {quoted} SET idle_in_transaction_session_timeout"
            f" = '{idle_in_transaction_timeout}'"
        )
        await conn.execute(f"GRANT {_quoted(member_of)} TO {quoted}")
    except asyncpg.PostgresError as exc:
        raise SqlAccessError(f"cannot create role {role}: {exc}") from exc


async def map_to_tenant(conn: Conn, role: str, tenant: str) -> None:
    """``role`` speaks for ``tenant`` from now on."""
    await conn.execute(q("map_tenant_role"), role, tenant)


async def unmap(conn: Conn, role: str) -> bool:
    """Forget ``role``'s tenant; False if it had none."""
    return bool(await conn.fetchval(q("unmap_tenant_role"), role))


async def drop_if_exists(conn: Conn, role: str) -> None:
    if await exists(conn, role):
        await conn.execute(f"DROP ROLE {_quoted(role)}")
