"""An agent whose start-up fails part-way undoes everything it had made (issue 21, item 5):
its database connections, fork server, lock warmer, listening socket and lease."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import anyio
import asyncpg
import pytest

import scheduler.agent.service as service
from scheduler.agent.service import run_agent
from scheduler.cgroups.detect import open_driver
from scheduler.errors import ConfigError
from scheduler.runtime.warmer import HELPER_NAME as WARMER_NAME
from tests.conftest import agent_settings, slow

pytestmark = pytest.mark.anyio


class InjectedFault(Exception):
    """The fault this test injects into the last step of start-up."""


def children() -> set[int]:
    """The live (not zombie) child processes of this test process."""
    found: set[int] = set()
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(
                line.split(":\t", 1) for line in (entry / "status").read_text().splitlines()
            )
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == me and not fields.get("State", "").startswith("Z"):
            found.add(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


async def sessions(db: asyncpg.Connection) -> list[str]:
    """The other sessions on this test's database (the agent's pools, listener...)."""
    rows = await db.fetch(
        "SELECT coalesce(application_name, '') AS name FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return [r["name"] for r in rows]


async def assert_undone(db: asyncpg.Connection, cgroup_root: str, before: set[int]) -> None:
    # A closed session's backend leaves pg_stat_activity a moment after the client is gone.
    deadline = time.monotonic() + slow(10)
    while (left := await sessions(db)) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert left == [], f"database sessions left open: {left}"
    while (new := children() - before) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert new == set(), f"processes left running (fork server, warmer): {new}"
    assert not open_driver(cgroup_root).helper_dir(WARMER_NAME).exists()
    assert await db.fetchval("SELECT pid FROM scheduler.nodes WHERE name = 'test-node'") is None


async def test_failure_in_the_last_start_up_step_undoes_everything(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    settings = agent_settings(dsn, state_dir, cgroup_root, http_addr=f"127.0.0.1:{port}")
    before = children()
    seen: dict[str, object] = {}

    async def failing_recover(*_args: object, **_kwargs: object) -> list[int]:
        # Everything is made by now: prove it, then fail as a broken recovery would.
        seen["listening"] = listening(port)
        seen["children"] = children() - before
        seen["sessions"] = await sessions(db)
        seen["warmer"] = open_driver(cgroup_root).helper_dir(WARMER_NAME).exists()
        raise InjectedFault("recovery failed")

    monkeypatch.setattr(service, "recover", failing_recover)
    with pytest.raises(BaseExceptionGroup) as failed:
        await run_agent(settings, dsn)
    assert failed.group_contains(InjectedFault)
    assert seen["listening"] is True
    assert seen["children"], "the fork server and warmer had started"
    assert seen["sessions"], "the pools were open"
    assert seen["warmer"] is True
    assert not listening(port), "the HTTP socket of a failed start is still listening"
    await assert_undone(db, cgroup_root, before)


async def test_failure_to_listen_undoes_everything_made_before(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    # A late builder's bad setting: the HTTP port is taken (by this test).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = agent_settings(dsn, state_dir, cgroup_root, http_addr=f"127.0.0.1:{port}")
        before = children()
        with pytest.raises(ConfigError, match="cannot listen"):
            await run_agent(settings, dsn)
    # It got as far as registering the node (and so opened its pools) before failing.
    assert await db.fetchval("SELECT count(*) FROM scheduler.nodes WHERE name = 'test-node'") == 1
    await assert_undone(db, cgroup_root, before)
