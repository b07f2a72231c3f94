"""The jobs repository: submit (one job, an array, once per idempotency key), read, list,
wait for and steer jobs; the one place the CLI and the HTTP API reach the jobs table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.db.refusals import refusal
from scheduler.errors import ControlRefused, IdempotencyMismatch, JobNotFound, SubmitRefused
from scheduler.jobs import FINAL_STATES, DesiredState
from scheduler.repos import listen
from scheduler.requests import ArraySpec, JobRequest

T = TypeVar("T")


def _job_args(request: JobRequest) -> tuple[Any, ...]:
    return (
        request.tenant,
        request.name,
        request.argv,
        request.env,
        request.cwd,
        request.cpu,
        request.memory_bytes,
        request.pids_max,
        request.timeout_seconds,
        request.priority,
        request.max_attempts,
        request.labels,
        request.run_at,
        request.image,
        request.network,
        request.io_read_bps,
        request.io_write_bps,
        request.output_limit_bytes,
        request.depends_on,
        request.constraints,
        request.kill_grace_seconds,
    )


async def submit_array(
    conn: Conn, request: JobRequest, array: ArraySpec, *, max_size: int
) -> list[asyncpg.Record]:
    """Insert an array's members in one statement (all or none), in index order; the members
    past max_running start gated (the database ungates one as each running one ends)."""
    array.check(max_size)
    cap = array.size if array.max_running is None else min(array.max_running, array.size)
    try:
        rows = await conn.fetch(
            q("insert_job_array"), *_job_args(request), array.start, array.end, cap
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise SubmitRefused(refusal(exc), getattr(exc, "column_name", None)) from exc
    return sorted(rows, key=lambda r: r["array_index"])


async def set_array_desired_state(
    conn: Conn,
    array_id: int,
    desired: DesiredState,
    *,
    within: frozenset[str] | None = None,
    now: bool = False,
) -> list[asyncpg.Record]:
    """Cancel, freeze or thaw every unfinished member of an array (``within``: the tenants
    the caller may steer); the members changed. JobNotFound if the caller sees no member.
    ``now`` (cancel only): no grace after SIGTERM, as for one job."""
    scope = sorted(within) if within is not None else None
    async with conn.transaction():
        if not await conn.fetchval(q("array_exists"), array_id, scope):
            raise JobNotFound(f"no array with id {array_id}")
        try:
            rows = await conn.fetch(
                q("set_array_desired_state"),
                array_id,
                desired,
                scope,
                now and desired == "cancelled",
            )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise ControlRefused(refusal(exc)) from exc
    return list(rows)


async def submit(conn: Conn, request: JobRequest) -> asyncpg.Record:
    """Insert one job; the database's own checks produce the refusal messages."""
    try:
        row = await conn.fetchrow(q("insert_job"), *_job_args(request))
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise SubmitRefused(refusal(exc), getattr(exc, "column_name", None)) from exc
    assert row is not None
    return row


async def find(conn: Conn, job_id: int) -> asyncpg.Record | None:
    """The job, or None if there is no such job."""
    row: asyncpg.Record | None = await conn.fetchrow(q("get_job"), job_id)
    return row


async def get(conn: Conn, job_id: int) -> asyncpg.Record:
    row = await find(conn, job_id)
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return row


async def state(conn: Conn, job_id: int) -> str | None:
    """The job's state (None: no such job)."""
    value: str | None = await conn.fetchval(q("job_state"), job_id)
    return value


async def progress(conn: Conn, job_id: int) -> asyncpg.Record | None:
    """The job's state, attempts and node (None: no such job)."""
    row: asyncpg.Record | None = await conn.fetchrow(q("job_progress"), job_id)
    return row


async def usage(conn: Conn, job_id: int) -> list[asyncpg.Record]:
    """Every usage row of the job, oldest first."""
    return list(await conn.fetch(q("job_usage"), job_id))


async def list_jobs(
    conn: Conn,
    *,
    tenant: str | None = None,
    state: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
    within: frozenset[str] | None = None,
    array_id: int | None = None,
) -> list[asyncpg.Record]:
    """Jobs newest first; ``within`` limits them to a set of tenants (a caller's scope),
    ``array_id`` to one array's members."""
    scope = sorted(within) if within is not None else None
    return list(await conn.fetch(q("list_jobs"), tenant, state, before_id, limit, scope, array_id))


async def wait(conn: Conn, job_id: int, *, poll: float = 5.0) -> asyncpg.Record:
    """Return the job once it reached a final state, woken by the database's NOTIFY
    scheduler_job_done (migration 0014: its payload is the id of the job that ended). The
    state is read after LISTEN starts, so an end committed just before is not missed; the
    poll is a backstop for a lost connection's notifications only."""
    done = anyio.Event()
    wanted = str(job_id)

    def _wake(_conn: object, _pid: object, _channel: object, payload: object) -> None:
        if payload == wanted:
            done.set()

    await conn.add_listener(listen.JOB_DONE, _wake)
    try:
        while True:
            row = await get(conn, job_id)
            if row["state"] in FINAL_STATES:
                return row
            with anyio.move_on_after(poll):
                await done.wait()
            done = anyio.Event()
    finally:
        await conn.remove_listener(listen.JOB_DONE, _wake)


async def submit_idempotent(
    conn: Conn, request: JobRequest, key: str, digest: str
) -> tuple[asyncpg.Record, bool]:
    """Submit once per (tenant, key); a repeat with the same digest returns the first job.

    The key row and the job commit in one transaction. A concurrent request with the same key
    waits on the key's unique index until the first commits, then finds its row: 50 parallel
    requests with one key make one job. Returns the job and whether it was a replay.
    """

    async def make() -> tuple[asyncpg.Record, int]:
        row = await submit(conn, request)
        return row, row["id"]

    made, job_id = await _once_per_key(conn, request.tenant, key, digest, make)
    if made is not None:
        return made, False
    return await get(conn, job_id), True


async def submit_array_idempotent(
    conn: Conn, request: JobRequest, array: ArraySpec, key: str, digest: str, *, max_size: int
) -> tuple[list[asyncpg.Record], bool]:
    """:func:`submit_array` once per (tenant, key), as :func:`submit_idempotent`: the key
    row names the first member; a replay returns every member of that array."""
    array.check(max_size)

    async def make() -> tuple[list[asyncpg.Record], int]:
        rows = await submit_array(conn, request, array, max_size=max_size)
        return rows, rows[0]["id"]

    made, job_id = await _once_per_key(conn, request.tenant, key, digest, make)
    if made is not None:
        return made, False
    first = await get(conn, job_id)
    members = await conn.fetch(q("array_members"), first["array_id"], first["tenant"])
    return list(members), True


async def _once_per_key(
    conn: Conn,
    tenant: str,
    key: str,
    digest: str,
    make: Callable[[], Awaitable[tuple[T, int]]],
) -> tuple[T | None, int]:
    """Run ``make`` (which returns what it made and the job id the key is to name) once per
    (tenant, key), in one transaction with the key row: (what it made, its job id) the first
    time; (None, the job id the key names) on a repeat with the same digest."""
    async with conn.transaction():
        claimed = await conn.fetchval(q("claim_idempotency_key"), tenant, key, digest)
        if claimed:
            made, job_id = await make()
            await conn.execute(q("set_idempotency_job"), tenant, key, job_id)
            return made, job_id
        existing = await conn.fetchrow(q("get_idempotency_key"), tenant, key)
    assert existing is not None
    if existing["request_hash"] != digest:
        raise IdempotencyMismatch(
            f"Idempotency-Key {key!r} was already used with a different body for tenant "
            f"{tenant!r}; use a new key for a different job"
        )
    return None, existing["job_id"]


async def set_desired_state(
    conn: Conn, job_id: int, desired: DesiredState, *, now: bool = False
) -> asyncpg.Record:
    """Ask for a job to run, be frozen or be cancelled; the agent running it reconciles.

    A queued job cancelled here is cancelled by the database itself; a finished job refuses.
    ``now`` (cancel only): its grace after SIGTERM is set to 0 in the same statement, so the
    agent kills it at once (also while it is already waiting out its grace).
    """
    row = await get(conn, job_id)
    if row["state"] in FINAL_STATES:
        raise ControlRefused(
            f"job {job_id} already finished as {row['state']}: it cannot be {_VERB[desired]}"
        )
    try:
        if now and desired == "cancelled":
            updated = await conn.fetchrow(q("cancel_now"), job_id)
        else:
            updated = await conn.fetchrow(q("set_desired_state"), job_id, desired)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ControlRefused(refusal(exc)) from exc
    if updated is None:
        raise JobNotFound(f"no job with id {job_id}")
    return updated


_VERB = {"running": "thawed", "frozen": "frozen", "cancelled": "cancelled"}
