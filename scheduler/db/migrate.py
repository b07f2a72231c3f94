"""Schema migrations: numbered plain SQL files applied in one transaction under a lock, then
the definitions (``migrations/definitions/<name>.sql``) whose text changed.

Two agents starting at once both call :func:`migrate`; a transaction-scoped lock (on the
migrations table once it exists, which no tenant role can take; an advisory lock before)
makes the second wait for the first and then find nothing left to do.

A definition is one ``CREATE OR REPLACE`` of a function that later changes would otherwise
copy whole into a new numbered file (the claim was copied five times): it lives in one file,
a change to it is a diff of that file, and it is applied again, after every numbered
migration, whenever its text differs from the text last applied.
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


@dataclass(frozen=True)
class Definition:
    """One repeatable definition file (a function the schema keeps at its latest text)."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


_DEFINITION_NAME = re.compile(r"^([a-z0-9_]+)\.sql$")


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


def load_definitions(directory: Path | None = None) -> list[Definition]:
    """The definition files of ``<migrations>/definitions``, by name (none: an empty list)."""
    directory = (directory or migrations_dir()) / "definitions"
    if not directory.is_dir():
        return []
    found: list[Definition] = []
    for path in sorted(directory.iterdir()):
        match = _DEFINITION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"definitions/{path.name}: definition files are named name.sql")
        found.append(Definition(match.group(1), path.read_text()))
    return found


async def applied_definitions(conn: Conn) -> dict[str, str]:
    """Definitions applied, with the checksums of their texts (empty on a new database)."""
    exists = await conn.fetchval("SELECT to_regclass('scheduler.schema_definitions') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT name, checksum FROM scheduler.schema_definitions")
    return {str(r["name"]): str(r["checksum"]) for r in rows}


async def applied_versions(conn: Conn) -> dict[int, str]:
    """Versions already applied, with their checksums (empty on a new database)."""
    exists = await conn.fetchval("SELECT to_regclass('scheduler.schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM scheduler.schema_migrations")
    return {int(r["version"]): str(r["checksum"]) for r in rows}


async def migrate(conn: Conn, directory: Path | None = None) -> list[int]:
    """Apply every pending migration, then every changed definition, in one transaction;
    return the versions applied."""
    migrations = load_migrations(directory)
    definitions = load_definitions(directory)
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
            await _apply_definitions(conn, definitions)
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"migration failed: {exc}") from exc
    return applied


async def _apply_definitions(conn: Conn, definitions: list[Definition]) -> None:
    """Apply the definitions whose text is not the one last applied (after the numbered
    migrations, which may add what they refer to; in the caller's transaction and lock)."""
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS scheduler.schema_definitions (
            name       text PRIMARY KEY,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        REVOKE ALL ON scheduler.schema_definitions FROM PUBLIC;
        """
    )
    done = await applied_definitions(conn)
    for definition in definitions:
        if done.get(definition.name) == definition.checksum:
            continue
        await conn.execute(definition.sql)
        await conn.execute(
            "INSERT INTO scheduler.schema_definitions (name, checksum) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
            definition.name,
            definition.checksum,
        )
        log.info("definition_applied", name=definition.name)


async def pending(conn: Conn, directory: Path | None = None) -> list[str]:
    """Migrations (``0007``) and definitions (``claim_jobs``) not yet applied as they are in
    the tree (empty when the schema is current)."""
    done = await applied_versions(conn)
    missing = [f"{m.version:04d}" for m in load_migrations(directory) if m.version not in done]
    current = await applied_definitions(conn)
    missing += [d.name for d in load_definitions(directory) if current.get(d.name) != d.checksum]
    return missing
