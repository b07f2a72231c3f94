"""The API tokens repository: tenant tokens are stored as their SHA-256 only."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.db.pool import Conn
from scheduler.db.queries import q


@dataclass(frozen=True)
class TokenOwner:
    """The tenant a live token speaks for and every tenant of its subtree (itself included)."""

    tenant: str
    tenants: frozenset[str]


async def owner(conn: Conn, token_hash: str) -> TokenOwner | None:
    """Who the live token with this hash speaks for; None if none does (unknown, revoked)."""
    row = await conn.fetchrow(q("token_principal"), token_hash)
    if row is None or row["tenant"] is None:
        return None
    return TokenOwner(row["tenant"], frozenset(row["tenants"]))


async def insert(conn: Conn, tenant: str, token_hash: str, description: str) -> int:
    """Store a token's hash for ``tenant``; its id."""
    return int(await conn.fetchval(q("insert_api_token"), tenant, token_hash, description))


async def revoke(conn: Conn, token_id: int) -> bool:
    """Revoke a live token by id; False if there is no such live token."""
    status: str = await conn.execute(q("revoke_api_token"), token_id)
    return status.endswith(" 1")
