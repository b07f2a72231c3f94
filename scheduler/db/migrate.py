"""Schema migrations: numbered plain SQL files applied in one transaction under a lock.

Two agents starting at once both call :func:`migrate`; a transaction-scoped lock (on the
migrations table once it exists, which no tenant role can take; an advisory lock before)
makes the second wait for the first and then find nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from scheduler.errors import MigrationError

log = structlog.get_logger(__name__)
# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy

# An arbitrary constant shared by every agent: "scheduler migrations" as a 63-bit key.
MIGRATION_LOCK_KEY = 0x5C4ED_0001
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The migrations/ directory of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read and order the migration files; refuse gaps, duplicates and stray names."""
    directory = directory or migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} is out of sequence: "
                f"expected {expected:04d}"
            )
    return found


async def applied_versions(conn: Conn) -> dict[int, str]:
    """Versions already applied, with their checksums (empty on a new database)."""
    exists = await conn.fetchval("SELECT to_regclass('scheduler.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM scheduler.schema_migrations")
    return {int(r["version"]): str(r["checksum"]) for r in rows}


async def migrate(conn: Conn, directory: Path | None = None) -> list[int]:
    """Apply every pending migration in one transaction; return the versions applied."""
    migrations = load_migrations(directory)
    try:
        async with conn.transaction():
            # Once the schema exists, tenant roles may exist too, and any role can hold an
            # advisory key: an agent would then wait for a tenant to start. The table lock
            # (self-conflicting) needs privileges on a table only the owner has. A new
            # database has no tenant roles yet: the advisory lock serialises its creation.
            if await conn.fetchval("SELECT to_regclass('scheduler.schema_migrations') IS NOT NULL"):
                await conn.execute(
                    "LOCK TABLE scheduler.schema_migrations IN SHARE ROW EXCLUSIVE MODE"
                )
            else:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(
                """
                CREATE SCHEMA IF NOT EXISTS scheduler;
                CREATE TABLE IF NOT EXISTS scheduler.schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                );
                """
            )
            done = await applied_versions(conn)
            applied: list[int] = []
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO scheduler.schema_migrations (version, name, checksum)"
                    " VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                applied.append(migration.version)
                log.info("migration_applied", version=migration.version, name=migration.name)
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"migration failed: {exc}") from exc
    return applied


async def pending(conn: Conn, directory: Path | None = None) -> list[int]:
    """Versions not yet applied (empty when the schema is current)."""
    done = await applied_versions(conn)
    return [m.version for m in load_migrations(directory) if m.version not in done]
