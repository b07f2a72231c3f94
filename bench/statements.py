"""Closed statements benchmark, against a private Postgres (no agent): a month of usage rows
(JOBS jobs of 20 tenants, ROWS rows each, labelled), then the month's export before and
after `close`, the close itself, `verify`, and the next month's export (which reads the
closed month for late rows). Prints seconds and the coverage table's size beside usage's.
Usage: python bench/statements.py [--jobs 2000] [--rows 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, remove_scratch
from bench.spine import make_base
from scheduler.accounting import billing
from scheduler.accounting.statements import close, verify
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate
from scheduler.db.pool import connect


async def main(jobs: int, rows: int) -> None:
    base = make_base()
    pg = EmbeddedPostgres(base / "pg")
    await pg.start()
    lines = []
    try:
        conn = await connect(pg.dsn)
        await migrate(conn)
        await conn.execute("SET scheduler.writer = 'agent'")
        await conn.execute(
            "INSERT INTO scheduler.tenants (name) SELECT 't' || g FROM generate_series(1, 20) g"
        )
        await conn.execute(
            "INSERT INTO scheduler.rates (resource, price) VALUES ('cpu_second', 0.0001),"
            " ('memory_gib_hour', 0.005), ('io_gib', 0.02)"
        )
        await conn.execute(
            """INSERT INTO scheduler.jobs (tenant, argv, labels, desired_state)
               SELECT 't' || (g % 20 + 1), ARRAY['true'],
                      jsonb_build_object('team', 'team' || (g % 7)), 'cancelled'
               FROM generate_series(1, $1) g""",
            jobs,
        )
        now = await conn.fetchval("SELECT now()")
        this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        last = (this_month - timedelta(days=1)).replace(day=1)
        # Each job's rows: 10 s periods from a start that moves a minute per job.
        await conn.execute(
            """INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,
                   period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes,
                   io_read_bytes, io_write_bytes)
               SELECT j.id, s, 1, j.tenant, 'n',
                      $1::timestamptz + s * interval '10 s' + j.id * interval '1 min',
                      $1::timestamptz + (s + 1) * interval '10 s' + j.id * interval '1 min',
                      1.5, 1e9, 1e8, 4096, 4096
               FROM scheduler.jobs j, generate_series(1, $2) s""",
            last,
            rows,
        )
        await conn.execute("ANALYZE")
        count = await conn.fetchval("SELECT count(*) FROM scheduler.usage")

        async def timed(what: str, work: object) -> object:
            t0 = time.perf_counter()
            result = await work  # type: ignore[misc]
            lines.append(f"{what}: {time.perf_counter() - t0:.2f} s")
            return result

        before = await timed(
            f"export of the month, {count} rows, open",
            billing.export_counted(conn, start=last, end=this_month, fmt="json"),
        )
        await timed("close", close(conn, last.date()))
        after = await timed(
            "export of the month, closed",
            billing.export_counted(conn, start=last, end=this_month, fmt="json"),
        )
        checked = await timed("verify", verify(conn))
        await timed(
            "export of the next month (reads the closed one for late rows)",
            billing.export_counted(conn, start=this_month, end=now, fmt="json"),
        )
        if before != after or checked[1]:  # type: ignore[index]
            raise SystemExit("the closed month's export changed, or verify found differences")
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('scheduler.statement_usage') AS coverage,"
            " pg_total_relation_size('scheduler.usage') AS usage"
        )
        if sizes is None:
            raise SystemExit("no sizes")
        lines.append(
            f"statement_usage {sizes['coverage'] / 2**20:.1f} MiB beside usage"
            f" {sizes['usage'] / 2**20:.1f} MiB"
        )
        await conn.close()
    finally:
        await pg.stop()
        remove_scratch(base)
    print(describe())
    for line in lines:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.rows)
