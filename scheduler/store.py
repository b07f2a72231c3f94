"""The job store: the one place that submits, reads and waits for jobs (CLI and HTTP)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import anyio
import asyncpg

from scheduler import jobdefaults
from scheduler.db.pool import Conn
from scheduler.db.queries import q
from scheduler.db.refusals import refusal
from scheduler.errors import ControlRefused, JobNotFound, SchedulerError, TenantNotFound
from scheduler.jobs import FINAL_STATES, DesiredState
from scheduler.names import NAME, NAME_SHAPE

T = TypeVar("T")


class SubmitRefused(SchedulerError):
    """The database refused the job."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class JobRequest:
    """What a client asks for; every field but argv has the database's default."""

    argv: list[str]
    tenant: str = jobdefaults.TENANT
    name: str = jobdefaults.NAME
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = jobdefaults.CWD
    cpu: Decimal = jobdefaults.CPU
    memory_bytes: int = jobdefaults.MEMORY_BYTES
    pids_max: int = jobdefaults.PIDS_MAX
    timeout_seconds: Decimal | None = None
    priority: int = jobdefaults.PRIORITY
    max_attempts: int = jobdefaults.MAX_ATTEMPTS
    labels: dict[str, Any] = field(default_factory=dict)
    run_at: datetime | None = None
    image: str | None = None
    network: bool = jobdefaults.NETWORK
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    # Most bytes of stdout+stderr kept (None: the tenant's, else the node's; never above them).
    output_limit_bytes: int | None = None
    # Jobs of the same tenant that must succeed first (migration 0014); fixed once submitted.
    depends_on: list[int] = field(default_factory=list)
    # Labels a node must have to run the job (migration 0016; scheduler/labels.py).
    constraints: dict[str, str] = field(default_factory=dict)

    # Seconds between SIGTERM and the kill at a cancel or the time limit (None: the
    # column's default, jobdefaults.KILL_GRACE_SECONDS).
    kill_grace_seconds: Decimal | None = None


@dataclass(frozen=True)
class ArraySpec:
    """An array: one job per index in [start, end], at most max_running of them at once."""

    start: int
    end: int
    max_running: int | None = None

    def check(self, max_size: int) -> None:
        """Refuse an empty, reversed or oversized range (max_size: the operator's bound)."""
        if not 0 <= self.start <= self.end <= INT4_MAX:
            raise SubmitRefused(
                f"array {self.start}-{self.end}: expected 0 <= start <= end <= {INT4_MAX}",
                "array",
            )
        if self.size > max_size:
            raise SubmitRefused(
                f"array {self.start}-{self.end} has {self.size} members: at most {max_size}"
                " (the operator's max_array_size)",
                "array",
            )
        if self.max_running is not None and self.max_running < 1:
            raise SubmitRefused(
                f"array max_running must be at least 1: got {self.max_running}", "array"
            )

    @property
    def size(self) -> int:
        return self.end - self.start + 1


INT4_MAX = 2**31 - 1


def record_to_dict(row: asyncpg.Record) -> dict[str, Any]:
    """A job row as JSON-ready values (decimals as strings keep their exactness)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            out[key] = str(value)
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


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


async def get(conn: Conn, job_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_job"), job_id)
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return row


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

    await conn.add_listener("scheduler_job_done", _wake)
    try:
        while True:
            row = await get(conn, job_id)
            if row["state"] in FINAL_STATES:
                return row
            with anyio.move_on_after(poll):
                await done.wait()
            done = anyio.Event()
    finally:
        await conn.remove_listener("scheduler_job_done", _wake)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


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
    members = await conn.fetch(
        "SELECT * FROM scheduler.jobs WHERE array_id = $1 AND tenant = $2 ORDER BY array_index",
        first["array_id"],
        first["tenant"],
    )
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
        claimed = await conn.fetchval(
            "INSERT INTO scheduler.idempotency_keys (tenant, key, request_hash)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true",
            tenant,
            key,
            digest,
        )
        if claimed:
            made, job_id = await make()
            await conn.execute(
                "UPDATE scheduler.idempotency_keys SET job_id = $3 WHERE tenant = $1 AND key = $2",
                tenant,
                key,
                job_id,
            )
            return made, job_id
        existing = await conn.fetchrow(
            "SELECT request_hash, job_id FROM scheduler.idempotency_keys"
            " WHERE tenant = $1 AND key = $2",
            tenant,
            key,
        )
    assert existing is not None
    if existing["request_hash"] != digest:
        raise IdempotencyMismatch(
            f"Idempotency-Key {key!r} was already used with a different body for tenant "
            f"{tenant!r}; use a new key for a different job"
        )
    return None, existing["job_id"]


class IdempotencyMismatch(SchedulerError):
    """The idempotency key was used before with a different request."""


# -- steering jobs and tenants (CLI and HTTP) -------------------------------------------------

# Tenant names become cgroup directory names: the same rule as the database's check.
TENANT_NAME = NAME

TENANT_FIELDS = (
    "parent",
    "cpu_limit",
    "memory_limit_bytes",
    "pids_limit",
    "max_running_jobs",
    "weight",
    "io_read_bps",
    "io_write_bps",
    "output_limit_bytes",
)


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


async def list_tenants(conn: Conn) -> list[asyncpg.Record]:
    """Every tenant with its limits and its count of active and queued jobs."""
    return list(await conn.fetch(q("list_tenants")))


async def get_tenant(conn: Conn, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(q("get_tenant"), name)
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


async def add_tenant(conn: Conn, name: str, **fields: Any) -> asyncpg.Record:
    """Create a tenant; ``fields`` are columns of TENANT_FIELDS (the database checks values)."""
    if not TENANT_NAME.match(name):
        raise ControlRefused(
            f"{name!r} is not a valid tenant name (tenant_name_format): expected {NAME_SHAPE}"
        )
    columns = ["name", *_tenant_columns(fields)]
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    try:
        row = await conn.fetchrow(
            f"INSERT INTO scheduler.tenants ({', '.join(columns)}) VALUES ({params}) RETURNING *",
            name,
            *fields.values(),
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise ControlRefused(refusal(exc)) from exc
    assert row is not None
    return row


async def set_tenant(conn: Conn, name: str, **fields: Any) -> asyncpg.Record:
    """Change a tenant's parent or limits (None clears a limit); agents apply it on NOTIFY."""
    columns = _tenant_columns(fields)
    if not columns:
        raise ControlRefused("nothing to change: give at least one setting")
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    try:
        row = await conn.fetchrow(
            f"UPDATE scheduler.tenants SET {assignments} WHERE name = $1 RETURNING *",
            name,
            *fields.values(),
        )
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise ControlRefused(refusal(exc)) from exc
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


async def set_tenant_frozen(conn: Conn, name: str, frozen: bool) -> asyncpg.Record:
    """Freeze (or thaw) a tenant's whole subtree: running jobs stop, queued jobs are held."""
    row = await conn.fetchrow(q("set_tenant_frozen"), name, frozen)
    if row is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return row


def _tenant_columns(fields: dict[str, Any]) -> list[str]:
    # Column names go into SQL text: only the known ones are accepted.
    unknown = sorted(set(fields) - set(TENANT_FIELDS))
    if unknown:
        raise ControlRefused(f"unknown tenant settings {unknown}: expected {TENANT_FIELDS}")
    return list(fields)
