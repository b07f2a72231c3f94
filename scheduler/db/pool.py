"""asyncpg connections with the codecs every part of the project expects."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg

from scheduler.config import Settings
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.errors import DatabaseError

# A plain connection or one borrowed from a pool: the store works with either.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
# A pool (each statement borrows a connection for itself) or a connection: what the
# repositories (scheduler/repos/) run one statement on.
Db = asyncpg.Pool | Conn
# What a database that is away, restarting or dropping sessions raises through asyncpg: server
# errors, client errors, socket errors and timeouts, and InternalClientError, which a pooled
# connection whose session dropped mid-statement raises on its next use ("cannot switch to
# state ...; another operation is in progress"). The agent's loops retry on any of them.
DB_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def _json_default(value: object) -> object:
    # Request bodies are parsed with exact Decimals; inside free-form JSON (labels) they are
    # stored as JSON numbers again.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: object) -> str:
    return json.dumps(value, default=_json_default)


# The session setting that marks the agent's own writes of outcome columns.
AGENT_WRITER_SETTING = "scheduler.writer"


async def _init(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def _reset(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) costs a round
    # trip per release; pooled connections here keep no session state, so only an abandoned
    # transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _init_agent(conn: asyncpg.Connection) -> None:
    await _init(conn)
    # SETs, not startup parameters: a pooler such as PgBouncer refuses unknown startup
    # parameters. The pool's reset keeps session settings. The agent's statements are small
    # and frequent: JIT compiling one (when the planner's estimate passes jit_above_cost)
    # costs tens of milliseconds and never pays back (migrations/0020_hot_path.sql).
    await conn.execute(f"SET {AGENT_WRITER_SETTING} = 'agent'; SET jit = off")


async def connect(dsn: str, *, agent_writer: bool = False, **kwargs: Any) -> asyncpg.Connection:
    """One connection (LISTEN, CLI); raises DatabaseError naming the target on failure. With
    ``agent_writer`` it may write the jobs' outcome columns, as :func:`create_pool`'s."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
    except DB_ERRORS as exc:
        raise DatabaseError(f"cannot connect to the database ({_redact(dsn)}): {exc}") from exc
    await (_init_agent if agent_writer else _init)(conn)
    return conn


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 8,
    name: str | None = None,
    idle_in_transaction_seconds: float | None = None,
    agent_writer: bool = False,
) -> asyncpg.Pool:
    """The agent's pool for claims, completions and queries. ``name`` is the sessions'
    application_name (pg_stat_activity); with ``idle_in_transaction_seconds`` Postgres ends a
    session that keeps a transaction open that long without sending anything, and with it the
    locks it holds: a stalled agent must not keep every other node from claiming. With
    ``agent_writer`` the sessions may write the jobs' outcome columns (state, node, exit
    code, totals...), which the database refuses to everyone else
    (migrations/0010_control_plane.sql, jobs_agent_columns)."""
    settings: dict[str, str] = {}
    if name is not None:
        settings["application_name"] = name
    if idle_in_transaction_seconds is not None:
        ms = max(1, round(idle_in_transaction_seconds * 1000))
        settings["idle_in_transaction_session_timeout"] = str(ms)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_agent if agent_writer else _init,
            reset=_reset,
            server_settings=settings,
        )
    except DB_ERRORS as exc:
        raise DatabaseError(f"cannot connect to the database ({_redact(dsn)}): {exc}") from exc
    assert pool is not None
    return pool


def _redact(dsn: str) -> str:
    """The DSN without its password, for error messages and logs."""
    head, sep, tail = dsn.partition("@")
    if not sep or "://" not in head:
        return dsn
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{tail}"


def settings_dsn(settings: Settings) -> str:
    """The database a configuration means: its URL, else the embedded server in its state dir."""
    if settings.db.url:
        return settings.db.url
    return EmbeddedPostgres(settings.paths.postgres_dir).dsn


async def connect_settings(settings: Settings) -> asyncpg.Connection:
    """A connection to the database of ``settings`` (the CLI's way in)."""
    return await connect(settings_dsn(settings))
