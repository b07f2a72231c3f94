"""HTTP API benchmark: POST /v1/jobs throughput and latency over keep-alive connections, with
the agent (`scheduler serve`) in one process and the load from others.

Jobs go to a frozen tenant, so they stay queued: the figure is the API's, not the runtime's.
Prints the machine, then:
  - throughput: `wrk` (Debian package) with C connections for D seconds, submissions/s;
  - latency at half that rate: requests paced at rate/2 by a small raw-socket keep-alive
    client (httpx itself costs more CPU than the server), p50 and p99 (target p99 < 20 ms).
Usage: python bench/api.py [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import anyio.abc
import anyio.streams.buffered
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import SCRATCH, describe
from bench.spine import percentile, start_agent, tear_down
from scheduler.db.embedded import EmbeddedPostgres

TOKEN = "bench-admin-token"
BODY = {"argv": ["true"], "tenant": "bench", "cpu": 0.1, "memory_bytes": 16 << 20}


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="sched-bench-api-", dir=SCRATCH))
    base.chmod(0o755)
    return base


def wrk_throughput(url: str, seconds: int, concurrency: int) -> float:
    script = Path(__file__).with_name("post_job.lua")
    out = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    bad = int(re.search(r"non_201=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert bad == 0, f"{bad} responses were not 201:\n{out}"
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]


REQUEST = (
    "POST /v1/jobs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(json.dumps(BODY))}\r\n\r\n"
    f"{json.dumps(BODY)}"
).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection sending the same POST (cheap enough to pace)."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = anyio.streams.buffered.BufferedByteReceiveStream(stream)
        self.raw = stream

    async def post(self) -> int:
        await self.raw.send(REQUEST)
        head = await self.stream.receive_until(b"\r\n\r\n", 65536)
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await self.stream.receive_exactly(length)
        return status


async def paced_latency(port: int, rate: float, seconds: float, pool: int = 16) -> list[float]:
    samples: list[float] = []
    idle = [Connection(await anyio.connect_tcp("127.0.0.1", port)) for _ in range(pool)]

    async def one(conn: Connection) -> None:
        t0 = time.perf_counter()
        status = await conn.post()
        samples.append((time.perf_counter() - t0) * 1000)
        idle.append(conn)
        assert status == 201, status

    interval = 1 / rate
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(int(rate * seconds)):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            while not idle:  # more in flight than connections: the server is saturated
                await anyio.sleep(0.001)
            tg.start_soon(one, idle.pop())
    for conn in idle:
        await conn.raw.aclose()
    return samples


async def main(seconds: int, concurrency: int) -> None:
    base = make_base()
    root = f"sched-bench-{uuid.uuid4().hex[:8]}"
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    agent = None
    try:
        conn = await asyncpg.connect(pg.dsn)
        agent = start_agent(
            pg.dsn,
            base / "state",
            root,
            {"SCHEDULER_ADMIN_TOKEN": TOKEN, "SCHEDULER_HTTP_ADDR": "127.0.0.1:18420"},
        )
        await conn.execute("INSERT INTO scheduler.tenants (name, frozen) VALUES ('bench', true)")
        url = "http://127.0.0.1:18420/v1/jobs"
        await anyio.to_thread.run_sync(wrk_throughput, url, 2, concurrency)  # warm up
        rate = await anyio.to_thread.run_sync(wrk_throughput, url, seconds, concurrency)
        lat = await paced_latency(18420, rate / 2, 5.0)
        await conn.close()
        print(describe())
        print(
            f"POST /v1/jobs throughput, wrk, {concurrency} keep-alive connections, {seconds} s: "
            f"{rate:.0f}/s (target >= 1000)"
        )
        print(
            f"latency at {rate / 2:.0f}/s over {len(lat)} requests: "
            f"p50 {statistics.median(lat):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms "
            "(target p99 < 20 ms)"
        )
    finally:
        await tear_down(agent, root, pg, base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    anyio.run(main, args.seconds, args.concurrency)
