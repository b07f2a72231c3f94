"""The status page: server-rendered HTML at ``/`` for a person with a browser, no JavaScript
and no front-end build. It shows nodes, tenants (running, queued, frozen, spend this month),
the queue with each waiting job's reason, running jobs with their latest cpu and memory,
recent failures with their errors, and a page per job with its log tail and usage rows.

It takes the API's tokens: the login form checks one and keeps it in an HttpOnly,
SameSite=Strict cookie (a script on another site can neither read nor send it); an
``Authorization: Bearer`` header works too. A tenant token sees its tenant's subtree only;
the admin token sees everything, nodes included. Every value from the database is escaped
(job names, errors and output are written by tenants who may be hostile), and the pages
forbid scripts, frames and foreign form targets by Content-Security-Policy.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from scheduler.accounting.billing import rate_from_row, usage_row
from scheduler.accounting.export import UsageRow, price
from scheduler.accounting.rates import MissingRate
from scheduler.api.auth import Principal, authenticate
from scheduler.api.context import deps
from scheduler.api.problems import Problem
from scheduler.escaping import escape
from scheduler.repos import jobs as job_repo
from scheduler.repos import status as repo
from scheduler.repos import tenants as tenant_repo
from scheduler.rundirs import run_dir_for
from scheduler.units import format_bytes

COOKIE = "scheduler_token"
COOKIE_SECONDS = 12 * 3600
REFRESH_SECONDS = 5
LOG_TAIL_BYTES = 8192
MAX_FORM_BYTES = 4096
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with the
    # login form, and the form could not be told from one posted by another site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.num{text-align:right}
pre{background:#f7f7f7;padding:.6em;max-width:100em;overflow:auto;white-space:pre-wrap}
.bad{color:#a00}
header form{display:inline}
"""
QUEUE_LIMIT = 100
RUNNING_LIMIT = 200
FAILURES_LIMIT = 20
USAGE_LIMIT = 100


def e(value: Any) -> str:
    """A value as safe HTML text: control characters made visible, markup escaped."""
    return html.escape(escape("-" if value is None else str(value)), quote=True)


def page(title: str, body: str, *, refresh: bool = True, status: int = 200) -> HTMLResponse:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} - scheduler</title>{meta}<style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """Cells must be escaped HTML already."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        return f"<p>{e(empty)}</p>"
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


async def _principal(request: Request, conn: Any) -> Principal | None:
    token = request.cookies.get(COOKIE)
    header = f"Bearer {token}" if token else request.headers.get("authorization")
    if not header:
        return None
    try:
        return await authenticate(conn, header, deps(request).admin_token)
    except Problem:
        return None


def _scope(who: Principal) -> list[str] | None:
    return None if who.tenants is None else sorted(who.tenants)


def _to_login() -> Response:
    return RedirectResponse("/login", status_code=303, headers=HEADERS)


def _header(who: Principal) -> str:
    role = "admin (everything)" if who.is_admin else f"tenant {e(who.name)}"
    return (
        f'<header><h1><a href="/">scheduler</a></h1><p>Signed in as {role}. '
        '<form method="post" action="/logout"><button>Sign out</button></form> '
        f"Refreshes every {REFRESH_SECONDS} s.</p></header>"
    )


# -- the overview ----------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    async with deps(request).pool.acquire() as conn:
        who = await _principal(request, conn)
        if who is None:
            return _to_login()
        scope = _scope(who)
        nodes = await repo.nodes(conn) if who.is_admin else []
        tenants = [t for t in await tenant_repo.list_tenants(conn) if who.sees(t["name"])]
        spend = await _spend_this_month(conn, who)
        queued = await repo.queued(conn, scope, QUEUE_LIMIT)
        running = await repo.running(conn, scope, RUNNING_LIMIT)
        failures = await repo.failures(conn, scope, FAILURES_LIMIT)
    by_tenant = {t["name"]: t for t in tenants}
    parts = [_header(who)]
    if who.is_admin:
        parts.append("<h2>Nodes</h2>" + _nodes(nodes))
    parts.append("<h2>Tenants</h2>" + _tenants(tenants, spend))
    parts.append(f"<h2>Queue ({len(queued)})</h2>" + _queue(queued, by_tenant))
    parts.append(f"<h2>Running ({len(running)})</h2>" + _running(running))
    parts.append("<h2>Recent failures</h2>" + _failures(failures))
    return page("status", "".join(parts))


def _job_link(job_id: int) -> str:
    return f'<a href="/jobs/{int(job_id)}">{int(job_id)}</a>'


def _nodes(rows: Sequence[Any]) -> str:
    return table(
        ["node", "state", "lease left", "jobs", "cpu used/cap", "memory used/cap", "driver"],
        (
            [
                e(r["name"]),
                e(r["state"]),
                e(f"{r['lease_left_seconds']:.0f} s" if r["state"] == "up" else "-"),
                e(r["jobs"]),
                e(f"{r['cpu_requested']:g}/{r['cpu']:g}"),
                e(f"{format_bytes(r['memory_requested'])}/{format_bytes(r['memory_bytes'])}"),
                e(r["cgroup_driver"]),
            ]
            for r in rows
        ),
        "no node has registered",
    )


def _tenants(rows: Sequence[Any], spend: dict[str, str]) -> str:
    return table(
        ["tenant", "running", "queued", "frozen", "spend this month"],
        (
            [
                e(r["name"]),
                e(r["active_jobs"]),
                e(r["queued_jobs"]),
                "yes" if r["frozen"] else "no",
                e(spend.get(r["name"], "0")),
            ]
            for r in rows
        ),
        "no tenants",
    )


def wait_reason(job: Any, tenant: Any | None, now: datetime) -> str:
    """Why a queued job waits, as far as the rows tell (the claim's own ordering is fair
    share, priority, age: a job with no other reason waits for its turn or for room)."""
    if job["desired_state"] == "cancelled":
        return "cancelled before it started"
    if job["run_at"] is not None and job["run_at"] > now:
        return f"not before {job['run_at'].isoformat(timespec='seconds')} (run_at)"
    if tenant is not None and tenant["frozen"]:
        return "its tenant is frozen"
    if job["desired_state"] == "frozen":
        return "frozen before it started (thaw to run)"
    limit = tenant["max_running_jobs"] if tenant is not None else None
    if tenant is not None and limit is not None and tenant["active_jobs"] >= limit:
        return f"its tenant runs {tenant['active_jobs']} of at most {limit} jobs"
    return "waiting for its turn (fair share, priority, age) or for cpu/memory on a node"


def _queue(rows: Sequence[Any], tenants: dict[str, Any]) -> str:
    now = datetime.now(UTC)
    return table(
        ["job", "tenant", "name", "priority", "submitted", "reason"],
        (
            [
                _job_link(r["id"]),
                e(r["tenant"]),
                e(r["name"]),
                e(r["priority"]),
                e(r["submitted_at"].isoformat(timespec="seconds")),
                e(wait_reason(r, tenants.get(r["tenant"]), now)),
            ]
            for r in rows
        ),
        "the queue is empty",
    )


def _running(rows: Sequence[Any]) -> str:
    def cpu(r: Any) -> str:
        if r["period_end"] is None:
            return "-"
        seconds = (r["period_end"] - r["period_start"]).total_seconds()
        return (
            f"{Decimal(r['cpu_seconds']) / Decimal(seconds):.2f} of {r['cpu']}" if seconds else "-"
        )

    def memory(r: Any) -> str:
        if r["memory_peak_bytes"] is None:
            return "-"
        return f"{format_bytes(r['memory_peak_bytes'])} of {format_bytes(r['memory_bytes'])}"

    return table(
        ["job", "tenant", "name", "state", "node", "cpu (cores, last sample)", "memory peak"],
        (
            [
                _job_link(r["id"]),
                e(r["tenant"]),
                e(r["name"]),
                e(r["state"]),
                e(r["node"]),
                e(cpu(r)),
                e(memory(r)),
            ]
            for r in rows
        ),
        "nothing runs",
    )


def _failures(rows: Sequence[Any]) -> str:
    return table(
        ["job", "tenant", "name", "state", "exit", "error", "finished"],
        (
            [
                _job_link(r["id"]),
                e(r["tenant"]),
                e(r["name"]),
                e(r["state"]),
                e(r["exit_code"] if r["signal"] is None else f"signal {r['signal']}"),
                f'<span class="bad">{e(r["error"])}</span>',
                e(r["finished_at"].isoformat(timespec="seconds") if r["finished_at"] else None),
            ]
            for r in rows
        ),
        "no failures",
    )


async def _spend_this_month(conn: Any, who: Principal) -> dict[str, str]:
    """Each visible tenant's priced usage since the 1st of this month (UTC), as text."""
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    rates = [rate_from_row(r) for r in await repo.billing_rates(conn)]
    rows: dict[str, list[UsageRow]] = defaultdict(list)
    for r in await repo.billing_usage(conn, start, now, None):
        if who.sees(r["tenant"]):
            rows[r["tenant"]].append(usage_row(r))
    spend: dict[str, str] = {}
    for tenant, usage in rows.items():
        try:
            lines = price(usage, rates, start=start, end=now)
        except MissingRate as exc:
            spend[tenant] = f"not priced: {exc}"
            continue
        by_currency: dict[str, Decimal] = defaultdict(Decimal)
        for line in lines:
            by_currency[line.rate.currency] += line.cost
        spend[tenant] = ", ".join(f"{v:.4f} {c}" for c, v in sorted(by_currency.items())) or "0"
    return spend


# -- one job ---------------------------------------------------------------------------------


async def job_page(request: Request) -> Response:
    job_id = int(request.path_params["job_id"])
    app_deps = deps(request)
    async with app_deps.pool.acquire() as conn:
        who = await _principal(request, conn)
        if who is None:
            return _to_login()
        row = await job_repo.find(conn, job_id) if job_id < 2**63 else None
        # Another tenant's job is answered as if it did not exist, as in the API.
        if row is None or not who.sees(row["tenant"]):
            return page(
                "no such job",
                _header(who) + f"<p>No job {job_id} that you may see.</p>",
                refresh=False,
                status=404,
            )
        usage = await repo.job_usage(conn, job_id, USAGE_LIMIT)
    fields = table(
        ["column", "value"],
        ([e(k), e(json.dumps(v) if isinstance(v, dict | list) else v)] for k, v in row.items()),
        "",
    )
    logs = await _log_tail(app_deps.runs_dir, app_deps.node, row)
    usage_rows = table(
        [
            "seq",
            "attempt",
            "node",
            "from",
            "to",
            "cpu s",
            "memory peak",
            "io read",
            "io write",
            "final",
        ],
        (
            [
                e(u["seq"]),
                e(u["attempt"]),
                e(u["node"]),
                e(u["period_start"].isoformat(timespec="seconds")),
                e(u["period_end"].isoformat(timespec="seconds")),
                e(u["cpu_seconds"]),
                e(format_bytes(u["memory_peak_bytes"])),
                e(format_bytes(u["io_read_bytes"])),
                e(format_bytes(u["io_write_bytes"])),
                "yes" if u["final"] else "",
            ]
            for u in usage
        ),
        "no usage rows yet",
    )
    body = (
        _header(who)
        + f"<h2>Job {job_id}: {e(row['name'] or ' '.join(row['argv']))}</h2>"
        + fields
        + logs
        + f"<h3>Usage (latest {USAGE_LIMIT})</h3>"
        + usage_rows
    )
    return page(f"job {job_id}", body, refresh=row["finished_at"] is None)


async def _log_tail(runs_dir: Any, node: str, row: Any) -> str:
    if row["attempts"] == 0:
        return "<h3>Output</h3><p>The job has not started yet.</p>"
    if row["node"] not in (None, node):
        return f"<h3>Output</h3><p>On node {e(row['node'])}: open that node's status page.</p>"
    out = []
    for stream in ("stdout", "stderr"):
        path = anyio.Path(run_dir_for(runs_dir, row["id"], row["attempts"]) / stream)
        text = "(nothing yet)"
        if await path.exists():
            async with await anyio.open_file(path, "rb") as f:
                size = (await path.stat()).st_size
                await f.seek(max(0, size - LOG_TAIL_BYTES))
                data = await f.read(LOG_TAIL_BYTES)
            cut = "... (earlier output cut)\n" if size > LOG_TAIL_BYTES else ""
            text = cut + data.decode(errors="replace")
        # Newlines and tabs stay (it is a log); every other control character is escaped.
        shown = "\n".join(escape(line).replace("\\t", "\t") for line in text.split("\n"))
        out.append(
            f"<h3>{stream} (last {LOG_TAIL_BYTES // 1024} KiB)</h3><pre>{html.escape(shown)}</pre>"
        )
    return "".join(out)


# -- signing in and out ----------------------------------------------------------------------


def _login_form(message: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p class="bad">{e(message)}</p>' if message else ""
    body = (
        "<h1>scheduler</h1>"
        f'{note}<form method="post" action="/login">'
        '<label>API token (admin or tenant) <input type="password" name="token" '
        'autocomplete="off" required size="50"></label> <button>Sign in</button></form>'
        "<p>The admin token of a first run is in the state directory's admin-token file; "
        "a tenant's comes from <code>scheduler tokens create --tenant NAME</code>.</p>"
    )
    return page("sign in", body, refresh=False, status=status)


async def login_form(request: Request) -> Response:
    return _login_form()


def _same_origin(request: Request) -> bool:
    """A form post must come from this site (a page elsewhere may not sign a browser in).
    Browsers say where a request comes from (Sec-Fetch-Site, Origin); a client that says
    neither (curl) is not a browser another site could drive."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _login_form("this form must be sent from this site", status=403)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _login_form("the form is too large", status=413)
    try:
        fields = parse_qs(body.decode(), max_num_fields=4, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return _login_form("the form could not be read", status=400)
    token = (fields.get("token") or [""])[0].strip()
    if not token:
        return _login_form("give a token", status=400)
    async with deps(request).pool.acquire() as conn:
        try:
            await authenticate(conn, f"Bearer {token}", deps(request).admin_token)
        except Problem:
            return _login_form("unknown or revoked token", status=401)
    response = RedirectResponse("/", status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def routes() -> list[Route]:
    return [
        Route("/", overview, methods=["GET"]),
        Route("/jobs/{job_id:int}", job_page, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
