"""Bearer tokens: the admin token from configuration, tenant tokens stored hashed."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

from scheduler.api.problems import Problem
from scheduler.repos import auth as repo

TOKEN_PREFIX = "sch_"  # noqa: S105 (a prefix that makes leaked tokens recognisable)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="scheduler"'}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (``tenants`` is None: everything) or a tenant's subtree."""

    name: str
    tenants: frozenset[str] | None

    @property
    def is_admin(self) -> bool:
        return self.tenants is None

    def sees(self, tenant: str) -> bool:
        """True if this caller may see and steer ``tenant``'s jobs."""
        return self.tenants is None or tenant in self.tenants


def new_token() -> str:
    """A fresh random bearer token (shown once, stored only as its hash)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or a 401 problem."""
    if not header:
        raise Problem(
            401,
            "missing Authorization header: send 'Authorization: Bearer <token>'",
            headers=CHALLENGE,
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "the Authorization header must be 'Bearer <token>'", headers=CHALLENGE)
    return token.strip()


async def authenticate(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    header: str | None,
    admin_token: str | None,
) -> Principal:
    """Resolve the caller; tenant tokens cover their tenant and its descendants."""
    token = bearer(header)
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal("admin", None)
    found = await repo.owner(conn, token_hash(token))
    if found is None:
        raise Problem(401, "unknown or revoked token", headers=CHALLENGE)
    return Principal(found.tenant, found.tenants)


async def create_token(
    conn: asyncpg.Connection, tenant: str, description: str = ""
) -> tuple[int, str]:
    """Store a new token for ``tenant``; return its id and the token (shown once)."""
    token = new_token()
    token_id = await repo.insert(conn, tenant, token_hash(token), description)
    return token_id, token


async def revoke_token(conn: asyncpg.Connection, token_id: int) -> bool:
    """Revoke a token by id; False if there is no such live token."""
    return await repo.revoke(conn, token_id)
