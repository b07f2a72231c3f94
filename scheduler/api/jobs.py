"""Routes under /v1/jobs: submit, read, list, steer, logs and usage."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from scheduler import jobdefaults
from scheduler.api import logs
from scheduler.api.auth import bearer
from scheduler.api.bodies import SUBMIT_FIELDS, parse_json, request_hash, validate
from scheduler.api.context import caller, deps
from scheduler.api.problems import Problem
from scheduler.api.reading import read_body
from scheduler.errors import ControlRefused, IdempotencyMismatch, JobNotFound, SubmitRefused
from scheduler.jobs import FINAL_STATES, DesiredState
from scheduler.presentation import record_to_dict
from scheduler.repos import jobs as repo
from scheduler.requests import TENANT_NAME, ArraySpec, JobRequest
from scheduler.rundirs import run_dir_for
from scheduler.states import JOB_STATES

STATES = JOB_STATES
MAX_LIMIT = 500
MAX_JOB_ID = 2**63 - 1  # ids are bigint


def job_json(row: asyncpg.Record) -> dict[str, Any]:
    """A job as the API shows it (exact decimals as strings, times in RFC 3339)."""
    return record_to_dict(row)


async def _visible_job(request: Request, conn: Any) -> asyncpg.Record:
    """The job of the path, or 404 when it does not exist or belongs to someone else."""
    job_id = request.path_params["job_id"]
    who = await caller(request, conn)
    if job_id > MAX_JOB_ID:
        raise Problem(404, f"no job with id {job_id}")
    try:
        row = await repo.get(conn, job_id)
    except JobNotFound:
        row = None
    if row is None or not who.sees(row["tenant"]):
        raise Problem(404, f"no job with id {job_id}")
    return row


async def create_job(request: Request) -> Response:
    bearer(request.headers.get("authorization"))  # no header: 401 before reading anything
    # The body is read and checked before a database connection is taken (reading.py).
    values = validate(parse_json(await read_body(request)), SUBMIT_FIELDS, ("argv",))
    array = values.pop("array", None)
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        # A tenant's token submits for its own tenant unless the body names a child tenant.
        job = JobRequest(**{"tenant": jobdefaults.TENANT if who.is_admin else who.name, **values})
        if not who.sees(job.tenant):
            raise Problem(403, f"this token may not submit jobs for tenant {job.tenant!r}")
        if array is not None:
            return await _create_array(request, conn, job, array)
        key = request.headers.get("idempotency-key")
        try:
            if key is None:
                row, replayed = await repo.submit(conn, job), False
            else:
                if not 1 <= len(key) <= 255:
                    raise Problem(400, "Idempotency-Key must be 1 to 255 characters")
                row, replayed = await repo.submit_idempotent(conn, job, key, request_hash(job))
        except IdempotencyMismatch as exc:
            raise Problem(422, str(exc)) from exc
        except SubmitRefused as exc:
            raise Problem(422, str(exc), field=exc.column) from exc
    headers = {"Location": f"/v1/jobs/{row['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job_json(row), status_code=201, headers=headers)


MAX_WAIT_SECONDS = 60


def _wait_seconds(text: str | None) -> int:
    """The wait= query parameter: whole seconds, more than MAX_WAIT_SECONDS taken as it."""
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise Problem(400, f"wait must be a whole number of seconds: got {text[:20]!r}")
    return min(int(text), MAX_WAIT_SECONDS)


async def _create_array(request: Request, conn: Any, job: JobRequest, array: ArraySpec) -> Response:
    """201 with the array's id and every member, in index order (an Idempotency-Key makes
    it once, as for one job)."""
    key = request.headers.get("idempotency-key")
    limit = deps(request).max_array_size
    try:
        if key is None:
            rows, replayed = await repo.submit_array(conn, job, array, max_size=limit), False
        else:
            if not 1 <= len(key) <= 255:
                raise Problem(400, "Idempotency-Key must be 1 to 255 characters")
            digest = request_hash(job, array)
            rows, replayed = await repo.submit_array_idempotent(
                conn, job, array, key, digest, max_size=limit
            )
    except IdempotencyMismatch as exc:
        raise Problem(422, str(exc)) from exc
    except SubmitRefused as exc:
        raise Problem(422, str(exc), field=exc.column) from exc
    array_id = rows[0]["array_id"]
    headers = {"Location": f"/v1/jobs?array={array_id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {"array_id": array_id, "items": [job_json(r) for r in rows]},
        status_code=201,
        headers=headers,
    )


async def _steer_array(request: Request, desired: DesiredState, *, now: bool = False) -> Response:
    array_id = request.path_params["array_id"]
    if array_id > MAX_JOB_ID:
        raise Problem(404, f"no array with id {array_id}")
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        try:
            rows = await repo.set_array_desired_state(
                conn, array_id, desired, within=who.tenants, now=now
            )
        except JobNotFound as exc:
            raise Problem(404, f"no array with id {array_id}") from exc
        except ControlRefused as exc:
            raise Problem(409, str(exc)) from exc
    return JSONResponse({"array_id": array_id, "changed": [record_to_dict(r) for r in rows]})


async def cancel_array(request: Request) -> Response:
    """``?now=true``: every member killed at once, without its grace after SIGTERM."""
    return await _steer_array(request, "cancelled", now=_now_flag(request))


async def freeze_array(request: Request) -> Response:
    return await _steer_array(request, "frozen")


async def thaw_array(request: Request) -> Response:
    return await _steer_array(request, "running")


async def get_job(request: Request) -> Response:
    """The job; with wait=N, answered when it ends or after N seconds, whichever is first.
    A waiting request holds no database connection (waiters.py)."""
    wait = _wait_seconds(request.query_params.get("wait"))
    app_deps = deps(request)
    async with app_deps.pool.acquire() as conn:
        row = await _visible_job(request, conn)
    hub = app_deps.job_done
    if wait == 0 or row["state"] in FINAL_STATES or hub is None:
        return JSONResponse(job_json(row))
    with hub.watch(row["id"]) as done:
        if done is None:
            # Too many waiting (or the LISTEN is down): the job as it is, at once.
            return JSONResponse(job_json(row), headers={"Scheduler-Wait": "unavailable"})
        # Read again now that the end will be heard: it may have come before.
        async with app_deps.pool.acquire() as conn:
            row = await repo.get(conn, row["id"])
        if row["state"] not in FINAL_STATES:
            with anyio.move_on_after(wait):
                await done.wait()
            async with app_deps.pool.acquire() as conn:
                row = await repo.get(conn, row["id"])
    return JSONResponse(job_json(row))


def _cursor(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(base64.urlsafe_b64decode(text.encode() + b"==").decode())
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(400, "cursor is not one this server returned") from exc
    if not 1 <= value <= MAX_JOB_ID:
        raise Problem(400, "cursor is not one this server returned")
    return value


def _array_param(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not (
        1 <= int(text) <= MAX_JOB_ID
    ):
        raise Problem(400, f"array must be an array id: got {text[:70]!r}")
    return int(text)


def _next_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode().rstrip("=")


async def list_jobs(request: Request) -> Response:
    params = request.query_params
    tenant, state = params.get("tenant"), params.get("state")
    if state is not None and state not in STATES:
        raise Problem(400, f"state must be one of {', '.join(STATES)}: got {state!r}")
    if tenant is not None and not TENANT_NAME.match(tenant):
        raise Problem(400, f"tenant must be a tenant name: got {tenant[:70]!r}")
    raw_limit = params.get("limit", "50")
    # ASCII digits only: "²" is a digit to str.isdigit() and a ValueError to int().
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4) or not (
        1 <= int(raw_limit) <= MAX_LIMIT
    ):
        raise Problem(400, f"limit must be an integer in [1, {MAX_LIMIT}]: got {raw_limit!r}")
    limit = int(raw_limit)
    before = _cursor(params.get("cursor"))
    array_id = _array_param(params.get("array"))
    async with deps(request).pool.acquire() as conn:
        who = await caller(request, conn)
        rows = await repo.list_jobs(
            conn,
            tenant=tenant,
            state=state,
            before_id=before,
            limit=limit + 1,
            within=who.tenants,
            array_id=array_id,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse(
        {
            "items": [job_json(r) for r in rows],
            "next_cursor": _next_cursor(rows[-1]["id"]) if more else None,
        }
    )


async def _steer(request: Request, desired: DesiredState, *, now: bool = False) -> Response:
    async with deps(request).pool.acquire() as conn:
        row = await _visible_job(request, conn)
        try:
            row = await repo.set_desired_state(conn, row["id"], desired, now=now)
        except ControlRefused as exc:
            raise Problem(409, str(exc)) from exc
    return JSONResponse(job_json(row))


async def cancel_job(request: Request) -> Response:
    """``?now=true``: kill at once, without the job's grace after SIGTERM."""
    return await _steer(request, "cancelled", now=_now_flag(request))


def _now_flag(request: Request) -> bool:
    """The cancel routes' ``now`` query parameter."""
    now = request.query_params.get("now", "false")
    if now not in ("true", "false"):
        raise Problem(400, f"now must be true or false: got {now[:20]!r}")
    return now == "true"


async def freeze_job(request: Request) -> Response:
    return await _steer(request, "frozen")


async def thaw_job(request: Request) -> Response:
    return await _steer(request, "running")


async def job_usage(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        row = await _visible_job(request, conn)
        rows = await repo.usage(conn, row["id"])
    return JSONResponse({"job_id": row["id"], "items": [record_to_dict(r) for r in rows]})


async def job_logs(request: Request) -> Response:
    """The job's output streamed from disk (tail, Range); with follow=true, until it ends."""
    stream = request.query_params.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise Problem(400, f"stream must be stdout or stderr: got {stream!r}")
    follow = request.query_params.get("follow", "false")
    if follow not in ("true", "false"):
        raise Problem(400, f"follow must be true or false: got {follow!r}")
    app_deps = deps(request)
    async with app_deps.pool.acquire() as conn:
        row = await _visible_job(request, conn)
    job_id = row["id"]

    async def finished() -> bool:
        async with app_deps.pool.acquire() as conn:
            state = await repo.state(conn, job_id)
        return state in FINAL_STATES

    if row["attempts"] == 0:
        if follow == "false" or row["state"] in FINAL_STATES:
            return Response(b"", media_type="text/plain")
        # Following a queued job waits for it to start: a client that submits and follows
        # at once must not get an empty answer because it asked too early.
        return StreamingResponse(
            _follow_queued(request, job_id, stream, finished), media_type="text/plain"
        )
    if row["node"] is not None and row["node"] != app_deps.node:
        raise Problem(404, f"job {row['id']} ran on node {row['node']!r}: ask that node's API")
    path = run_dir_for(app_deps.runs_dir, row["id"], row["attempts"]) / stream
    return await logs.respond(
        request,
        path,
        follow=follow == "true",
        running=row["state"] not in FINAL_STATES,
        finished=finished,
    )


async def _follow_queued(
    request: Request, job_id: int, stream: str, finished: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    app_deps = deps(request)
    while True:
        async with app_deps.pool.acquire() as conn:
            row = await repo.progress(conn, job_id)
        if row is None or (row["attempts"] == 0 and row["state"] in FINAL_STATES):
            return
        if row["attempts"] > 0:
            break
        await anyio.sleep(0.25)
    if row["node"] is not None and row["node"] != app_deps.node:
        return  # another node runs it: its output is there (a plain GET says so)
    path = run_dir_for(app_deps.runs_dir, job_id, row["attempts"]) / stream
    async for chunk in logs.follow_file(path, 0, finished):
        yield chunk
