"""Hostile request bodies against a real agent: a huge one (announced, and chunked without a
length), JSON that parses but cannot be stored (an unpaired surrogate), other malformed
input, and a client that goes away mid-body."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from tests.attacks.conftest import ADMIN, ADMIN_TOKEN, Served, is_problem
from tests.attacks.outcomes import record

pytestmark = pytest.mark.anyio

MIB = 1 << 20
# How much the agent's peak RSS may grow while it refuses a 400 MB body (it reads 1 MiB).
RSS_BOUND_KIB = 48 * 1024


def _head(port: int, extra: str) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


async def _send_until_answered(
    port: int, head: bytes, frames: int, frame: bytes
) -> tuple[bytes, int]:
    """Send ``head`` then up to ``frames`` copies of ``frame`` until the server answers;
    the answer's head and the body bytes sent."""
    answer = bytearray()
    answered = anyio.Event()
    sent = 0
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:

        async def read() -> None:
            try:
                while b"\r\n\r\n" not in answer:
                    answer.extend(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            answered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await stream.send(head)
            try:
                for _ in range(frames):
                    if answered.is_set():
                        break
                    await stream.send(frame)
                    sent += len(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the server closed the connection after its 413
            with anyio.fail_after(60):
                await answered.wait()
            tg.cancel_scope.cancel()
    return bytes(answer), sent


async def test_huge_body_is_refused_without_buffering(served: Served) -> None:
    await served.start()
    async with httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/healthz")).status_code == 200
    before = max(served.status_kib("VmHWM"), served.status_kib("VmRSS"))
    # Announced: refused on its Content-Length, before a byte of the body is sent.
    answer, sent = await _send_until_answered(
        served.port, _head(served.port, "Content-Length: 400000000\r\n"), 0, b""
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"application/problem+json" in answer
    # Chunked, no length: 400 MB in 1 MiB chunks, refused once past the limit.
    data = b" " * MIB
    frame = f"{len(data):x}\r\n".encode() + data + b"\r\n"
    answer, sent = await _send_until_answered(
        served.port, _head(served.port, "Transfer-Encoding: chunked\r\n"), 400, frame
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert sent < 100 * MIB, f"{sent} bytes went in before the 413"
    grown = served.status_kib("VmHWM") - before
    assert grown < RSS_BOUND_KIB, f"peak RSS grew by {grown} KiB"
    async with httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/healthz")).status_code == 200
    record(
        "400 MB request body (announced, then chunked)",
        f"413 at once / after {sent // MIB} MiB sent; peak RSS +{grown // 1024} MiB",
    )


async def test_a_refused_body_gets_its_answer_then_a_fin_not_a_reset(served: Served) -> None:
    """The 413 of a body refused mid-stream is followed by a FIN, and what the client still
    sends is read and dropped for a while: closed at once with unread bytes, the socket was
    reset, and a reset can discard the 413 before it leaves (it did on the v2 VM)."""
    await served.start()
    frame = f"{MIB:x}\r\n".encode() + b" " * MIB + b"\r\n"
    answer = bytearray()
    async with await anyio.connect_tcp("127.0.0.1", served.port) as stream:
        await stream.send(_head(served.port, "Transfer-Encoding: chunked\r\n"))
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:

                async def push() -> None:
                    for _ in range(64):  # well past the limit; stops when answered
                        await stream.send(frame)

                tg.start_soon(push)
                while b"\r\n\r\n" not in answer:
                    answer.extend(await stream.receive())
                tg.cancel_scope.cancel()
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        # The client goes on sending a little (as one that has not read the answer yet
        # would): no reset comes back, and the server's side ends with a FIN.
        for _ in range(3):
            await stream.send(frame)
            await anyio.sleep(0.05)
        ended = "reset"
        with anyio.fail_after(30):
            try:
                while True:
                    await stream.receive()
            except anyio.EndOfStream:
                ended = "fin"
            except (anyio.BrokenResourceError, OSError):
                pass
        assert ended == "fin"
    async with httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/healthz")).status_code == 200


HOSTILE: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
    # (method, path, body, headers, expected status)
    ("POST", "/v1/jobs", b'{"argv": ["echo", "\\ud800"]}', {}, 400),
    ("POST", "/v1/jobs", b'{"argv": ["true"], "labels": {"\\udfff": 1}}', {}, 400),
    ("POST", "/v1/tenants", b'{"name": "x\\ud800"}', {}, 400),
    ("POST", "/v1/jobs", b'{"argv": ["true"], "labels": {"x": 1e999999999}}', {}, 400),
    ("POST", "/v1/jobs", b"[" * 50_000 + b"]" * 50_000, {}, 400),
    (
        "POST",
        "/v1/jobs",
        b'{"argv": ["true"], "labels": ' + b"[" * 100 + b"]" * 100 + b"}",
        {},
        400,
    ),
    ("POST", "/v1/jobs", b"\xff\xfe{}", {}, 400),
    ("POST", "/v1/jobs", b'{"argv": ["true"], "labels": {"a": ["\\u0000"]}}', {}, 422),
    ("GET", "/v1/jobs?tenant=%00", None, {}, 400),
    ("GET", "/v1/jobs?cursor=OTk5OTk5OTk5OTk5OTk5OTk5OTk5", None, {}, 400),
    ("GET", "/v1/jobs/1/logs?tail=-1", None, {}, 404),
    ("GET", "/v1/jobs?limit=%C2%B2", None, {}, 400),  # "²": a digit to isdigit(), not to int()
    ("GET", "/v1/jobs?limit=" + "9" * 5000, None, {}, 400),
    ("GET", "/v1/jobs/99999999999999999999999", None, {}, 404),
    ("POST", "/v1/jobs", b"{}", {"Idempotency-Key": "k" * 300}, 422),
]


async def test_no_client_input_makes_a_500(served: Served) -> None:
    await served.start()
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        for method, path, body, headers, status in HOSTILE:
            r = await client.request(
                method,
                path,
                content=body,
                headers={**ADMIN, "content-type": "application/json", **headers},
            )
            is_problem(r, status)
        # A request head larger than the server takes: 431, not a memory sink.
        r = await client.get("/healthz", headers={"X-Big": "a" * 100_000})
        is_problem(r, 431)
        assert (await client.get("/healthz")).status_code == 200
        # Nothing half-made: no job, no tenant came of it.
        listed = (await client.get("/v1/jobs", headers=ADMIN)).json()
        assert listed["items"] == []
    log = served.log.read_text()
    assert "Traceback" not in log and "http_request_failed" not in log, log[-3000:]
    record(
        'JSON string "\\ud800" (and 15 other hostile inputs)',
        "400/404/422/431 problem+json, no 500, no traceback",
    )


async def test_a_client_gone_mid_body_is_a_debug_line(served: Served) -> None:
    await served.start(log_level="debug")
    for _ in range(3):
        async with await anyio.connect_tcp("127.0.0.1", served.port) as stream:
            await stream.send(_head(served.port, "Content-Length: 1000\r\n") + b'{"argv": [')
            await anyio.sleep(0.2)  # the handler is waiting for the rest of the body
    with anyio.fail_after(30):
        # Until the three are logged, either way (the old agent logged each as an error).
        while (
            served.log.read_text().count('"http_client_disconnected"')
            + served.log.read_text().count('"http_request_failed"')
            < 3
        ):
            await anyio.sleep(0.05)
    lines = [
        json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")
    ]
    gone = [line for line in lines if line.get("event") == "http_client_disconnected"]
    assert {line["level"] for line in gone} == {"debug"}
    text = served.log.read_text()
    assert "Traceback" not in text and "http_request_failed" not in text, text[-3000:]
    assert served.alive()
    record("client disconnects mid-body (x3)", "one debug line each, no error, no traceback")


METRICS_TOKEN = "scrape-only-token-0123456789"


async def test_metrics_require_their_token_when_one_is_set(served: Served) -> None:
    await served.start(metrics_token=METRICS_TOKEN)
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        anonymous = is_problem(await client.get("/metrics"), 401)
        assert "Authorization" in anonymous["detail"]
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        is_problem(wrong, 401)
        # Not the admin's token either: a scraper holds the metrics token only.
        is_problem(await client.get("/metrics", headers=ADMIN), 401)
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert ok.status_code == 200
        assert "scheduler_queue_depth" in ok.text
        # The rest of the unauthenticated surface is unchanged.
        assert (await client.get("/healthz")).status_code == 200
    record("anonymous GET /metrics (metrics_token set)", "401 problem+json; 200 with the token")


HOLDERS = 150


RESET = b"(closed by the server)"


async def test_many_bodies_at_once_share_a_bounded_budget(served: Served) -> None:
    await served.start()
    async with httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/healthz")).status_code == 200
    before = max(served.status_kib("VmHWM"), served.status_kib("VmRSS"))
    size = MIB - 64  # under the per-body limit: only the shared budget can refuse them
    body = b" " * (size - 1)  # all but the last byte: each body stays unfinished
    answers: list[bytes] = []
    done = anyio.Event()
    stop = anyio.Event()

    async def hold() -> None:
        async with await anyio.connect_tcp("127.0.0.1", served.port) as stream:
            answer = b""
            try:
                await stream.send(_head(served.port, f"Content-Length: {size}\r\n") + body)
                # Long enough for a refusal to arrive on a loaded host (a 503 counted as held
                # would break the bound below), well short of the 30 s body timeout.
                with anyio.move_on_after(15):
                    while b"\r\n\r\n" not in answer:
                        answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                # The server closed it (after its 503, which a reset can overtake): not held.
                answer = answer or RESET
            answers.append(answer)
            if len(answers) == HOLDERS:
                done.set()
            await stop.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(HOLDERS):
            tg.start_soon(hold)
        with anyio.fail_after(120):
            await done.wait()
        grown = served.status_kib("VmHWM") - before
        stop.set()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    reset = [a for a in answers if a == RESET]
    held = [a for a in answers if not a]
    assert len(refused) + len(reset) + len(held) == HOLDERS, [a[:40] for a in answers]
    assert refused and all(b"retry-after: 1" in a.lower() for a in refused)
    assert len(held) <= 64
    assert grown < 110 * 1024, f"peak RSS grew by {grown} KiB"
    async with httpx.AsyncClient(base_url=served.url) as client:
        r = await client.post("/v1/jobs", headers=ADMIN, json={"argv": ["true"]})
        assert r.status_code == 201, r.text  # the budget was given back
    record(
        f"{HOLDERS} bodies of ~1 MiB held unfinished at once",
        f"{len(held)} held, {len(refused)} got 503 Retry-After ({len(reset)} closed first);"
        f" peak RSS +{grown // 1024} MiB",
    )
