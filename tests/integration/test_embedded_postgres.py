"""The embedded Postgres: initdb, start, reuse, restart, stale pid files, binaries lookup.

Servers live under a fresh ``/tmp/sched-pg-*`` directory (mode 0755) rather than pytest's
``tmp_path``: as root the server runs as an unprivileged user, who cannot traverse the 0700
``/tmp/pytest-of-root``. Every test's directory is torn down by the ``pg_base`` fixture, which
also kills any server still running in it, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from scheduler.db import embedded
from scheduler.db.embedded import (
    EmbeddedPostgres,
    PostgresBinaries,
    find_binaries,
    pgserver_binaries,
)
from scheduler.errors import EmbeddedPostgresError
from tests.conftest import slow

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # The loop `scheduler serve` runs on (uvloop), so tests meet its limits too.
    return ("asyncio", {"use_uvloop": True})


def _have_binaries() -> bool:
    try:
        find_binaries()
    except EmbeddedPostgresError:
        return False
    return True


needs_binaries = pytest.mark.skipif(not _have_binaries(), reason="no Postgres binaries")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_pgserver = pytest.mark.skipif(
    importlib.util.find_spec("pgserver") is None, reason="pgserver is not installed"
)


def _kill_servers(base: Path) -> None:
    """Immediate shutdown of any postmaster left in ``base``, then wait for its processes."""
    for pidfile in base.glob("**/data/postmaster.pid"):
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError):
            continue
    deadline = time.monotonic() + 10
    for data in base.glob("**/data"):
        while embedded._processes_in(data) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def pg_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sched-pg-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        _kill_servers(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def server(pg_base: Path) -> AsyncIterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(pg_base / "pg", unsafe_fast=True)
    await pg.start()
    try:
        yield pg
    finally:
        await pg.stop()


def _postmaster_pid(pg: EmbeddedPostgres) -> int | None:
    try:
        return int((pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except FileNotFoundError:
        return None


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# ------------------------------------------------------------------------- binaries


def test_find_binaries_finds_the_system_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDULER_PG_BINDIR", raising=False)
    system = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if (p / "initdb").exists() and (p / "postgres").exists()
    ]
    if not system:
        pytest.skip("no system Postgres in /usr/lib/postgresql")
    found = find_binaries()
    assert found.source == "system"
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(found.bindir / name, os.X_OK)
    assert found.major >= 10
    assert found.version.split(".")[0] == str(found.major)


@needs_binaries
def test_scheduler_pg_bindir_overrides_and_is_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = find_binaries()
    monkeypatch.setenv("SCHEDULER_PG_BINDIR", str(real.bindir))
    found = find_binaries()
    assert found == PostgresBinaries(real.bindir, real.version, "env")

    monkeypatch.setenv("SCHEDULER_PG_BINDIR", str(tmp_path))
    with pytest.raises(EmbeddedPostgresError, match="SCHEDULER_PG_BINDIR"):
        find_binaries()


@needs_pgserver
def test_find_binaries_falls_back_to_pgserver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SCHEDULER_PG_BINDIR", raising=False)
    monkeypatch.setattr(embedded, "_pg_config_bindir", lambda: None)
    monkeypatch.setattr(embedded, "_debian_bindirs", list)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_binaries()
    assert found.source == "pgserver"
    assert found == pgserver_binaries()


def test_no_binaries_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SCHEDULER_PG_BINDIR", raising=False)
    monkeypatch.setattr(embedded, "_pg_config_bindir", lambda: None)
    monkeypatch.setattr(embedded, "_debian_bindirs", list)
    monkeypatch.setattr(embedded, "_pgserver_bindir", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedPostgresError) as info:
        find_binaries()
    assert "apt-get install postgresql" in str(info.value)
    assert "scheduler[embedded]" in str(info.value)


# ------------------------------------------------------------------------- names


def test_dsn_and_psql_command() -> None:
    pg = EmbeddedPostgres(Path("/var/lib/scheduler/postgres"), database="jobs", port=5433)
    assert pg.socket_dir == Path("/var/lib/scheduler/postgres/run")
    assert pg.dsn == "postgresql://postgres@/jobs?host=/var/lib/scheduler/postgres/run&port=5433"
    assert pg.admin_dsn.startswith("postgresql://postgres@/postgres?")
    command = pg.psql_command()
    assert command.endswith("-h /var/lib/scheduler/postgres/run -p 5433 -U postgres jobs")


async def test_too_long_socket_path_is_refused() -> None:
    pg = EmbeddedPostgres(Path("/tmp") / ("x" * 120))
    with pytest.raises(EmbeddedPostgresError, match="107-byte limit"):
        await pg.start()
    assert not pg.base_dir.exists()


# ------------------------------------------------------------------------- lifecycle


@needs_binaries
async def test_start_connect_stop_restart_keeps_data(pg_base: Path) -> None:
    pg = EmbeddedPostgres(pg_base / "pg", unsafe_fast=True)
    try:
        began = time.monotonic()
        await pg.start()
        first = time.monotonic() - began
        assert pg.running
        assert await _fetchval(pg.dsn, "SELECT 1") == 1
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == "scheduler"
            assert await conn.fetchval("SHOW listen_addresses") == ""
            assert await conn.fetchval("SHOW max_connections") == "200"
            assert await conn.fetchval("SHOW fsync") == "off"
            assert await conn.fetchval("SHOW server_encoding") == "UTF8"
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
        finally:
            await conn.close()

        mode = stat.S_IMODE(pg.socket_path.stat().st_mode)
        assert mode & 0o077 == 0, f"socket is mode {mode:o}"
        if os.geteuid() == 0:
            assert pg.data_dir.stat().st_uid != 0

        await pg.stop()
        assert not pg.running
        assert not (pg.data_dir / "postmaster.pid").exists()

        began = time.monotonic()
        await pg.start()
        restart = time.monotonic() - began
        assert await _fetchval(pg.dsn, "SELECT v FROM kept") == "hello"
        print(f"first start {first:.2f}s, restart {restart:.2f}s")
    finally:
        await pg.stop()


@needs_binaries
async def test_durable_settings_by_default(pg_base: Path) -> None:
    async with EmbeddedPostgres(pg_base / "pg", database="other") as pg:
        assert await _fetchval(pg.dsn, "SELECT current_database()") == "other"
        assert await _fetchval(pg.dsn, "SHOW fsync") == "on"
        assert await _fetchval(pg.dsn, "SHOW synchronous_commit") == "on"
    assert not (pg.data_dir / "postmaster.pid").exists()


@needs_binaries
async def test_start_twice_is_idempotent_and_reuses(server: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(server)
    await server.start()
    assert _postmaster_pid(server) == pid

    # A second object on the same directory adopts the running server...
    other = EmbeddedPostgres(server.base_dir, unsafe_fast=True)
    await other.start()
    assert _postmaster_pid(server) == pid
    assert await _fetchval(other.dsn, "SELECT 1") == 1
    # ...and, not having started it, leaves it running on stop.
    await other.stop()
    assert await _fetchval(server.dsn, "SELECT 1") == 1


@needs_binaries
async def test_concurrent_first_starts_share_one_server(pg_base: Path) -> None:
    pgs = [EmbeddedPostgres(pg_base / "pg", unsafe_fast=True) for _ in range(3)]
    try:
        async with anyio.create_task_group() as tg:
            for pg in pgs:
                tg.start_soon(pg.start)
        assert sum(pg._owned_pid is not None for pg in pgs) == 1
        for pg in pgs:
            assert await _fetchval(pg.dsn, "SELECT 1") == 1
    finally:
        for pg in pgs:
            await pg.stop()
    assert not (pgs[0].data_dir / "postmaster.pid").exists()


@needs_binaries
async def test_stale_postmaster_pid_after_sigkill(pg_base: Path) -> None:
    first = EmbeddedPostgres(pg_base / "pg", unsafe_fast=True)
    second = EmbeddedPostgres(pg_base / "pg", unsafe_fast=True)
    try:
        await first.start()
        conn = await asyncpg.connect(first.dsn)
        # unsafe_fast turns synchronous_commit off: ask for this commit to reach the WAL.
        await conn.execute("SET synchronous_commit = on")
        await conn.execute("CREATE TABLE survivor (v int); INSERT INTO survivor VALUES (7)")
        pid = _postmaster_pid(first)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(slow(10)):
            while embedded._is_postmaster_of(pid, first.data_dir):
                await anyio.sleep(0.05)
        conn.terminate()
        assert (first.data_dir / "postmaster.pid").exists()  # stale, left by the kill

        await second.start()
        assert _postmaster_pid(second) != pid
        assert await _fetchval(second.dsn, "SELECT v FROM survivor") == 7

        # The first object's server is gone: its stop must not touch the new one.
        await first.stop()
        assert await _fetchval(second.dsn, "SELECT 1") == 1
    finally:
        await first.stop()
        await second.stop()


@needs_binaries
async def test_failed_start_shows_the_log(pg_base: Path) -> None:
    pg = EmbeddedPostgres(pg_base / "pg", unsafe_fast=True)
    await pg.start()
    await pg.stop()
    with (pg.data_dir / "postgresql.auto.conf").open("a") as f:
        f.write("shared_buffers = 'lots'\n")
    try:
        with pytest.raises(EmbeddedPostgresError) as info:
            await pg.start()
        message = str(info.value)
        assert "did not start" in message
        assert "postgres.log" in message
        assert "shared_buffers" in message
    finally:
        await pg.stop()


@needs_binaries
@needs_root
async def test_root_reports_an_untraversable_parent(pg_base: Path) -> None:
    private = pg_base / "private"
    private.mkdir(mode=0o700)
    pg = EmbeddedPostgres(private / "pg", unsafe_fast=True)
    with pytest.raises(EmbeddedPostgresError) as info:
        await pg.start()
    message = str(info.value)
    assert str(private) in message
    assert "chmod o+x" in message
    assert not pg.running


@needs_binaries
@needs_root
async def test_root_makes_missing_parents_traversable(pg_base: Path) -> None:
    async with EmbeddedPostgres(pg_base / "a" / "b" / "pg", unsafe_fast=True) as pg:
        assert await _fetchval(pg.dsn, "SELECT 1") == 1
        assert stat.S_IMODE((pg_base / "a").stat().st_mode) == 0o711
        assert stat.S_IMODE((pg_base / "a" / "b").stat().st_mode) == 0o711


# ------------------------------------------------------------------------- pgserver


@needs_pgserver
async def test_pgserver_binaries_run_a_server(pg_base: Path) -> None:
    binaries = pgserver_binaries()
    assert binaries.source == "pgserver"
    pg = EmbeddedPostgres(pg_base / "pg", unsafe_fast=True, binaries=binaries)
    try:
        await pg.start()
        assert pg.binaries == binaries
        version = await _fetchval(pg.dsn, "SHOW server_version_num")
        assert isinstance(version, str)
        assert int(version) // 10000 == binaries.major
        await pg.stop()
        await pg.start()  # and again, on the data it made
        assert await _fetchval(pg.dsn, "SELECT 1") == 1
    finally:
        await pg.stop()
