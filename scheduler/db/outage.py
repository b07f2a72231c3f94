"""Which database errors mean "the database is away or full" (keep the rows, try later) and
which mean a statement is wrong (retrying the same rows can never succeed).

Spooled usage rows wait on disk only for the first two kinds: a row the database refuses on
its merits would block the spool for ever.
"""

from __future__ import annotations

from typing import Any, Literal

import asyncpg

from scheduler.db.pool import DB_ERRORS

OutageKind = Literal["unreachable", "full"]

# SQLSTATE class 53 (insufficient resources) and 54000: Postgres cannot write for lack of
# disk, memory or connections, or hit one of its own limits.
_CONDITION_NAMES = {
    "53000": "insufficient_resources",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "53400": "configuration_limit_exceeded",
    "54000": "program_limit_exceeded",
}
_UNREACHABLE = (
    OSError,  # refused, reset, socket gone (a stopped server's Unix socket)
    TimeoutError,  # no answer in time: the outcome of a write is unknown
    asyncpg.InterfaceError,  # connection closed, pool closing
    asyncpg.InternalClientError,  # a pooled connection left mid-operation by a killed session
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03, 57014
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby promoted late / failover
)
_FULL = (asyncpg.exceptions.InsufficientResourcesError, asyncpg.ProgramLimitExceededError)
# DB_ERRORS (db.pool): everything a database round trip may raise that is the database's,
# not a bug of ours. Catch those, then ask outage_kind() whether to keep the work for later.
__all__ = ["DB_ERRORS", "OutageKind", "describe", "log_failure", "outage_kind"]


def outage_kind(exc: BaseException) -> OutageKind | None:
    """``unreachable`` or ``full`` when ``exc`` means the database cannot take writes now;
    None when the statement itself is at fault."""
    if isinstance(exc, _FULL):
        return "full"
    if isinstance(exc, _UNREACHABLE):
        return "unreachable"
    return None


def describe(exc: BaseException) -> str:
    """One line an operator can act on, e.g. ``database refuses writes: disk_full (SQLSTATE
    53100): could not extend file ...``."""
    kind = outage_kind(exc)
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if kind == "full":
        state = getattr(exc, "sqlstate", None) or "?"
        name = _CONDITION_NAMES.get(state, "insufficient_resources")
        return f"database refuses writes: {name} (SQLSTATE {state}): {detail}"
    if kind == "unreachable":
        return f"database unreachable: {type(exc).__name__}: {detail}"
    return f"database error: {type(exc).__name__}: {detail}"


def log_failure(logger: Any, event: str, exc: BaseException, **fields: object) -> None:
    """Log a failed database round trip: one warning line when the database is away or full
    (expected, retried: no traceback), the full traceback otherwise (a bug to look at).
    Call it inside the ``except`` block."""
    if outage_kind(exc) is not None:
        logger.warning(event, error=describe(exc), **fields)
    else:
        logger.exception(event, error=describe(exc), **fields)
