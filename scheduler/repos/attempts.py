"""Attempts' ends: the one statement that records a batch of finished attempts with their
closing usage rows, and the release of claims whose attempt never billed anything."""

from __future__ import annotations

import re

import asyncpg

from scheduler.db.pool import Conn, Db
from scheduler.db.queries import q


def _renumbered(sql: str, by: int) -> str:
    """``sql`` with its parameters $1, $2, ... renumbered from $(1 + by)."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", sql)


# The ends of a batch's attempts (finish_jobs, $1-$14), their closing usage rows
# (insert_closing_usage, $15-$25) and the NOTIFY that capacity was freed, in one statement:
# one round trip instead of BEGIN, three statements and COMMIT. The arguments are columns,
# for unnest, and the usage rows are inserted in one order, whatever the batch's. Each
# data-modifying WITH query runs once and to completion whether or not it is read; they
# touch different tables, and the usage rows' numbering reads only the usage table.
FINISH_PARAMS = 14
RECORD = (
    f"WITH finished AS (\n{q('finish_jobs').rstrip(';')}\n),\n"
    f"closing AS (\n{_renumbered(q('insert_closing_usage'), FINISH_PARAMS).rstrip(';')}\n)\n"
    f"{q('notify_jobs_done').rstrip(';')}"
)


async def record(db: Db, columns: list[list[object]]) -> None:
    """Record a batch: ``columns`` are finish_jobs' argument columns, then the closing usage
    rows' (recorder._record_args)."""
    await db.execute(RECORD, *columns)


async def release_claims(
    conn: Conn, job_ids: list[int], attempts: list[int], releases: list[str | None]
) -> list[asyncpg.Record]:
    """Put back in the queue the attempts that have no usage row; the rows released."""
    return await conn.fetch(q("release_claims"), job_ids, attempts, releases)
