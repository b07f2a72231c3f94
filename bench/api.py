"""HTTP API benchmark: POST /v1/jobs throughput and latency, keep-alive, from this process
while the agent (`scheduler serve`) runs in another.

Jobs go to a frozen tenant, so they stay queued: the figure is the API's, not the runtime's.
Prints the machine, then:
  - throughput: N submissions with C concurrent keep-alive connections, submissions/s;
  - latency at half that rate: requests paced at rate/2, p50 and p99 (target p99 < 20 ms).
Usage: python bench/api.py [--requests 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from bench.spine import percentile, start_agent
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import open_driver
from scheduler.db.embedded import EmbeddedPostgres

TOKEN = "bench-admin-token"
BODY = {"argv": ["true"], "tenant": "bench", "cpu": 0.1, "memory_bytes": 16 << 20}


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="sched-bench-api-", dir="/tmp"))
    base.chmod(0o755)
    return base


async def throughput(client: httpx.AsyncClient, n: int, concurrency: int) -> float:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            r = await client.post("/v1/jobs", json=BODY)
            assert r.status_code == 201, r.text

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return n / (time.perf_counter() - t0)


async def paced_latency(client: httpx.AsyncClient, rate: float, seconds: float) -> list[float]:
    samples: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        r = await client.post("/v1/jobs", json=BODY)
        samples.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 201, r.text

    interval = 1 / rate
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(int(rate * seconds)):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            tg.start_soon(one)
    return samples


async def main(n: int, concurrency: int) -> None:
    base = make_base()
    root = f"sched-bench-{uuid.uuid4().hex[:8]}"
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    agent = None
    try:
        conn = await asyncpg.connect(pg.dsn)
        agent = start_agent(pg.dsn, base / "state", root, {
            "SCHEDULER_ADMIN_TOKEN": TOKEN, "SCHEDULER_HTTP_ADDR": "127.0.0.1:18420"})
        await conn.execute("INSERT INTO scheduler.tenants (name, frozen) VALUES ('bench', true)")
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url="http://127.0.0.1:18420", limits=limits,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            await throughput(client, 200, concurrency)  # warm up
            rate = await throughput(client, n, concurrency)
            lat = await paced_latency(client, rate / 2, 5.0)
        await conn.close()
        print(describe())
        print(f"POST /v1/jobs throughput, {n} requests, {concurrency} keep-alive connections: "
              f"{rate:.0f}/s (target >= 1000)")
        print(f"latency at {rate / 2:.0f}/s over {len(lat)} requests: "
              f"p50 {statistics.median(lat):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms "
              "(target p99 < 20 ms)")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        open_driver(root).remove_tree(CgroupPath(()))
        await pg.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    anyio.run(main, args.requests, args.concurrency)
