"""Shared fixtures: one real Postgres per test session, a fresh database per test cloned from a
migrated template, a private cgroup root per test, and a running agent on demand."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from scheduler.agent.service import Ready, run_agent
from scheduler.cgroups.base import CgroupPath
from scheduler.cgroups.detect import detect_layout, open_driver
from scheduler.config import Settings, make_settings
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate
from scheduler.db.pool import connect
from scheduler.errors import CgroupError
from scheduler.runtime.launcher import monitor_binary

TEMPLATE = "scheduler_template"
# How much slower than this machine the tests run: `make test-v2` sets it for the emulated VM
# (about 10x). Deadlines that assert speed or wait for progress scale by it; none is skipped.
SLOWDOWN = float(os.environ.get("SCHEDULER_TEST_SLOWDOWN") or 1)


def slow(seconds: float) -> float:
    """A deadline of ``seconds`` on this machine, scaled to the one the tests run on."""
    return seconds * SLOWDOWN


# State directories and Postgres clusters of the tests, and files tests share with their
# jobs. Not /tmp, /var/tmp or /dev/shm: every job gets private ones, so a path the test
# shares with its jobs must be elsewhere (on disk, traversable by every tenant's uid).
SCRATCH = "/var/lib/scheduler-tests"
os.makedirs(SCRATCH, mode=0o755, exist_ok=True)


def with_database(dsn: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """pytest-timeout's thread method unless asked otherwise: its default (SIGALRM) raises
    in a signal handler, which uvloop runs as a loop callback and only logs, so an async
    test (nearly all of them) that hangs was never stopped. The thread method prints every
    thread's stack and ends the session: a hang leaves a diagnosis instead of a stuck run."""
    if getattr(config.option, "timeout_method", "") is None:  # "": the plugin is off
        config.option.timeout_method = "thread"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI every test must run: a skip there (no root, no Postgres, no promtool...) fails.

    The skips stay useful on a developer's machine that lacks a tool; CI installs them all.
    """
    report = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
    return report


def host_kind() -> tuple[str, bool]:
    """(cgroup layout "v1" | "hybrid" | "v2", systemd is PID 1) of this host."""
    try:
        mode: str = detect_layout().mode
    except CgroupError:
        mode = "none"
    return mode, Path("/run/systemd/system").is_dir()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the tests written for another kind of host: ``v1_host`` tests
    read v1 controller files, ``v2_systemd_host`` tests install systemd units. Each kind of
    host CI has runs its own (`make test` here, `make test-v2` in the pure v2 VM), so every
    test runs somewhere; a skip would make CI=true fail on the host that cannot run it, by
    design. The deselection is said in pytest's summary line ("N deselected")."""
    mode, systemd = host_kind()
    v1_here, v2_systemd_here = mode in ("v1", "hybrid"), mode == "v2" and systemd
    wrong = [
        item
        for item in items
        if (item.get_closest_marker("v1_host") and not v1_here)
        or (item.get_closest_marker("v2_systemd_host") and not v2_systemd_here)
    ]
    if wrong:
        config.hook.pytest_deselected(items=wrong)
        items[:] = [item for item in items if item not in wrong]
    if SLOWDOWN > 1:
        scale_timeout_markers(config, items)


def scale_timeout_markers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test's own ``@pytest.mark.timeout(N)`` scaled by SLOWDOWN, up to the session's
    timeout (the v2 VM's is 120 s times the slowdown, capped), which it may raise but never
    lower: unscaled, a test given 600 s here because it is long had less time in the
    emulated VM than every other test there, and a timeout ends the whole session."""
    option = getattr(config.option, "timeout", None)
    ceiling = float(option if option is not None else config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is None or not marker.args:
            continue
        own = float(marker.args[0])
        scaled = own * SLOWDOWN
        if ceiling:
            scaled = min(scaled, max(ceiling, own))
        # Prepended, so pytest-timeout's get_closest_marker finds it before the test's.
        item.add_marker(pytest.mark.timeout(scaled), append=False)


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # The loop `scheduler serve` runs on (uvloop), so tests meet its limits too.
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="session")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scheduler-monitor binary, compiled once per test session."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    return monitor_binary(tmp_path_factory.mktemp("monitor-cache"))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A real Postgres server for the session (SCHEDULER_TEST_DATABASE_URL, else embedded)."""
    external = os.environ.get("SCHEDULER_TEST_DATABASE_URL")
    if external:
        yield external
        return
    base = Path(tempfile.mkdtemp(prefix="sched-pg-", dir=SCRATCH))
    base.chmod(0o755)
    server = EmbeddedPostgres(base, unsafe_fast=True)
    anyio.run(server.start)
    try:
        yield server.admin_dsn
    finally:
        anyio.run(server.stop)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> str:
    """A database migrated once, cloned by every test that needs a schema."""

    async def build() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await admin.close()
        conn = await connect(with_database(pg_admin_dsn, TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    anyio.run(build)
    return TEMPLATE


@pytest.fixture
async def dsn(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    finally:
        await admin.close()
    yield with_database(pg_admin_dsn, name)
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def private_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres server of this test's own, migrated, for tests that stop, restart or fill
    it (the session server is shared). ``server.dsn`` reaches the ``scheduler`` database."""
    base = Path(tempfile.mkdtemp(prefix="sched-pg-private-", dir=SCRATCH))
    base.chmod(0o755)
    server = EmbeddedPostgres(base, unsafe_fast=True)
    try:
        await server.start()
        conn = await connect(server.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def write_as_agent(conn: asyncpg.Connection) -> None:
    """Let ``conn`` write the jobs' outcome columns (state, node, totals...) as the agent
    does: tests that stage a job's state by hand (migrations/0010, jobs_agent_columns)."""
    await conn.execute("SET scheduler.writer = 'agent'")


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    """A cgroup root of this test's own, removed with everything under it afterwards."""
    name = f"sched-test-{uuid.uuid4().hex[:8]}"
    yield name
    open_driver(name).remove_tree(CgroupPath(()))


@pytest.fixture
def peer_cgroup_roots(cgroup_root: str) -> Iterator[list[str]]:
    """Two more cgroup roots of this test's own, for a second and third agent on one host."""
    names = [f"{cgroup_root}-b", f"{cgroup_root}-c"]
    yield names
    for name in names:
        open_driver(name).remove_tree(CgroupPath(()))


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sched-state-", dir=SCRATCH))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class AgentHandle:
    settings: Settings
    ready: Ready
    scope: anyio.CancelScope

    def stop(self) -> None:
        """Stop the agent as SIGTERM would: running jobs keep running."""
        self.scope.cancel()


def agent_settings(dsn: str, state_dir: Path, cgroup_root: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": dsn,
        "state_dir": state_dir,
        "cgroup_root": cgroup_root,
        "node_name": "test-node",
        "http_addr": "127.0.0.1:0",
        "admin_token": "test-admin-token",
        "poll_interval": 0.5,
        "max_running": 64,
        # A job shorter than this gets one usage row (its closing one), as tests expect of
        # `true`; emulated, even `true` takes longer than the usual 10 s under load.
        "sample_interval": slow(10.0),
    }
    values.update(extra)
    return make_settings(**values)


async def start_agent(tg: anyio.abc.TaskGroup, settings: Settings) -> AgentHandle:
    """Start an agent as a task of ``tg``; return once it is ready."""
    assert settings.db.url is not None
    ready: list[Ready] = []
    event = anyio.Event()
    scope = anyio.CancelScope()

    def on_ready(r: Ready) -> None:
        ready.append(r)
        event.set()

    async def run() -> None:
        with scope:
            assert settings.db.url is not None
            await run_agent(settings, settings.db.url, on_ready=on_ready)

    tg.start_soon(partial(run))
    with anyio.fail_after(slow(60)):
        await event.wait()
    return AgentHandle(settings, ready[0], scope)


@pytest.fixture
async def agent(dsn: str, state_dir: Path, cgroup_root: str) -> AsyncIterator[AgentHandle]:
    """One running agent on a fresh database, cgroup root and state directory."""
    async with anyio.create_task_group() as tg:
        handle = await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root))
        yield handle
        tg.cancel_scope.cancel()
