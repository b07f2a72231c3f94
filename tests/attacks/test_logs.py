"""A 2 GB output file read through GET /v1/jobs/{id}/logs of a real agent: streamed in
bounded memory, with ?tail and Range answered from the file's end without reading the rest.

The file is made sparse (truncate) in the run directory of a real finished job, so the test
writes a few bytes, not 2 GB; the agent reads every byte of it all the same."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.attacks.conftest import ADMIN, Served, is_problem, wait_state
from tests.attacks.outcomes import record

pytestmark = pytest.mark.anyio

SIZE = 2 << 30
MARKER = b"...the-last-line\n"
# How much the agent's peak RSS may grow while it sends 2 GB (it holds a chunk at a time).
RSS_BOUND_KIB = 64 * 1024


def _make_huge(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(SIZE)
        f.seek(SIZE - len(MARKER))
        f.write(MARKER)


async def _get(client: httpx.AsyncClient, url: str, **headers: str) -> httpx.Response:
    """The response with at most 1 MiB of its body read (a server that ignored the tail or
    the range must not make the test hold 2 GB)."""
    async with client.stream("GET", url, headers={**ADMIN, **headers}) as r:
        body = b""
        async for chunk in r.aiter_raw():
            body += chunk
            if len(body) > 1 << 20:
                break
    return httpx.Response(r.status_code, headers=r.headers, content=body)


async def test_a_2gb_log_is_streamed_in_bounded_memory(served: Served) -> None:
    await served.start()
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
        job = (await client.post("/v1/jobs", headers=ADMIN, json={"argv": ["echo", "head"]})).json()
        await wait_state(client, job["id"], {"succeeded"})
        stdout = served.state_dir / "runs" / f"{job['id']}-1" / "stdout"
        assert stdout.read_bytes() == b"head\n"
        await anyio.to_thread.run_sync(_make_huge, stdout)
        logs = f"/v1/jobs/{job['id']}/logs"
        before = max(served.status_kib("VmHWM"), served.status_kib("VmRSS"))

        tail = await _get(client, f"{logs}?tail={len(MARKER)}")
        assert (tail.status_code, tail.content) == (200, MARKER)
        first = await _get(client, logs, Range="bytes=0-4")
        assert (first.status_code, first.content) == (206, b"head\n")
        assert first.headers["content-range"] == f"bytes 0-4/{SIZE}"
        last = await _get(client, logs, Range=f"bytes=-{len(MARKER)}")
        assert (last.status_code, last.content) == (206, MARKER)
        assert last.headers["content-range"] == f"bytes {SIZE - len(MARKER)}-{SIZE - 1}/{SIZE}"
        middle = await _get(client, logs, Range=f"bytes={SIZE - 8}-{SIZE + 100}")
        assert (middle.status_code, middle.content) == (206, MARKER[-8:])
        past = await _get(client, logs, Range=f"bytes={SIZE}-")
        is_problem(past, 416)
        assert past.headers["content-range"] == f"bytes */{SIZE}"
        is_problem(await _get(client, f"{logs}?tail=5", Range="bytes=0-1"), 400)
        is_problem(await _get(client, f"{logs}?tail=x"), 400)

        # Everything, read as it comes: 2 GB through the agent, counted here.
        received = 0
        started = time.monotonic()
        head = b""
        end = b""
        async with client.stream("GET", logs, headers=ADMIN) as whole:
            assert whole.status_code == 200
            assert whole.headers["content-length"] == str(SIZE)
            assert whole.headers["accept-ranges"] == "bytes"
            async for chunk in whole.aiter_raw():
                if len(head) < 5:
                    head += chunk[:5]
                received += len(chunk)
                end = (end + chunk)[-len(MARKER) :]
        took = time.monotonic() - started
        assert (received, head[:5], end) == (SIZE, b"head\n", MARKER)
        # Several ranges are not supported: ignored, the whole output (not read to the end).
        async with client.stream("GET", logs, headers={**ADMIN, "Range": "bytes=0-1,4-5"}) as r:
            assert (r.status_code, r.headers["content-length"]) == (200, str(SIZE))
    grown = served.status_kib("VmHWM") - before
    assert grown < RSS_BOUND_KIB, f"peak RSS grew by {grown} KiB"
    record(
        "GET logs of a 2 GB output (whole, tail, Range)",
        f"streamed ({SIZE / took / 1e6:.0f} MB/s); tail/206/416 right;"
        f" peak RSS +{grown // 1024} MiB",
    )


async def test_follow_with_tail_streams_until_the_job_ends(served: Served) -> None:
    await served.start()
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        job = (
            await client.post(
                "/v1/jobs",
                headers=ADMIN,
                json={"argv": ["sh", "-c", "echo aaaa; sleep 2; echo bbbb"]},
            )
        ).json()
        stdout = served.state_dir / "runs" / f"{job['id']}-1" / "stdout"
        with anyio.fail_after(60):
            while not (stdout.exists() and stdout.read_bytes() == b"aaaa\n"):
                await anyio.sleep(0.02)
        chunks = []
        url = f"/v1/jobs/{job['id']}/logs?follow=true&tail=3"
        async with client.stream("GET", url, headers=ADMIN) as s:
            assert s.status_code == 200
            async for chunk in s.aiter_bytes():
                chunks.append(chunk)
        assert b"".join(chunks) == b"aa\nbbbb\n"
        is_problem(
            await client.get(
                f"/v1/jobs/{job['id']}/logs?follow=true", headers={**ADMIN, "Range": "bytes=0-1"}
            ),
            400,
        )
    record("follow=true&tail=3 on a running job", "last 3 bytes, then the rest until its end")
