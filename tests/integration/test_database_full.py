"""A database that refuses writes for lack of disk (SQLSTATE 53100), for real: the billing
table lives in a tablespace on a tiny tmpfs that is then filled. Rows are spooled, /readyz
says why, finished jobs wait, and once space is back every row lands exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.agent.spool import SUFFIX
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.pool import connect
from tests.conftest import agent_settings, slow, start_agent
from tests.integration.test_agent import wait_final
from tests.integration.test_metrics_endpoint import parse, scrape
from tests.integration.test_usage_spool import (
    FAST,
    assert_books_balance,
    readyz,
    submit_burners,
    wait_spooled,
)
from tests.tmpfs import fill, tiny_tmpfs

pytestmark = pytest.mark.anyio


async def set_usage_tablespace(db: asyncpg.Connection, tablespace: str) -> None:
    await db.execute(f"ALTER TABLE scheduler.usage SET TABLESPACE {tablespace}")
    for part in await db.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
        " WHERE inhparent = 'scheduler.usage'::regclass"
    ):
        await db.execute(f"ALTER TABLE {part['name']} SET TABLESPACE {tablespace}")


async def test_database_out_of_disk_spools_usage_and_recovers(
    private_postgres: EmbeddedPostgres, state_dir: Path, cgroup_root: str
) -> None:
    server = private_postgres
    with tiny_tmpfs("1m") as disk:
        location = disk / "tablespace"
        location.mkdir(mode=0o700)
        owner = server.data_dir.stat()
        os.chown(location, owner.st_uid, owner.st_gid)
        db = await connect(server.dsn)
        try:
            await db.execute(f"CREATE TABLESPACE tiny LOCATION '{location}'")
            # usage is partitioned by month (migration 0015): its rows live in the months'
            # tables, each moved (the parent's tablespace is only the one new months get).
            await set_usage_tablespace(db, "tiny")
            filler = fill(disk)
            settings = agent_settings(server.dsn, state_dir, cgroup_root, **FAST)
            async with anyio.create_task_group() as tg:
                agent = await start_agent(tg, settings)
                ids = await submit_burners(db, [2, 3, 4])
                await wait_spooled(settings.paths.spool_dir, at_least=6)
                status, reasons = await readyz(agent)
                assert status == 503
                assert any("disk_full (SQLSTATE 53100)" in r for r in reasons), reasons
                metrics = parse((await scrape(agent)).text)
                assert metrics[("scheduler_usage_spool_rows", ())] >= 6
                # Jobs end while the disk is full: their records wait (their cgroups stay).
                with anyio.fail_after(slow(30)):
                    while not any(
                        "finished jobs wait to be recorded" in r for r in (await readyz(agent))[1]
                    ):
                        await anyio.sleep(0.1)
                assert await db.fetchval("SELECT count(*) FROM scheduler.usage") == 0
                filler.unlink()
                await wait_final(db, ids, timeout=60)
                await assert_books_balance(db, ids)
                with anyio.fail_after(slow(30)):
                    while (await readyz(agent))[0] != 200:
                        await anyio.sleep(0.1)
                assert list(settings.paths.spool_dir.glob(f"*{SUFFIX}")) == []
                tg.cancel_scope.cancel()
        finally:
            await set_usage_tablespace(db, "pg_default")
            await db.execute("DROP TABLESPACE tiny")
            await db.close()
