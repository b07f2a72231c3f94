"""The attack suite: a hostile tenant (token, SQL role) or anonymous client against a real
agent and Postgres. Each test ends with :func:`tests.attacks.outcomes.record`; the table of
attack -> outcome is printed at the end of the run, like the fault suite's counts."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.agent_process import start_serve, stop, wait_ready
from tests.attacks.outcomes import RESULTS, table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("attacks (what a hostile client tried -> what happened)")
    for line in table(RESULTS):
        terminalreporter.write_line(line)


ADMIN_TOKEN = "attack-suite-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Served:
    """``scheduler serve`` as a real process (its memory and descriptors are its own to
    measure), stopped at the end of the test."""

    def __init__(self, dsn: str, state_dir: Path, cgroup_root: str) -> None:
        self.dsn = dsn
        self.state_dir = state_dir
        self.cgroup_root = cgroup_root
        self.log = state_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def start(self, **settings: object) -> Served:
        self.proc = start_serve(
            self.dsn,
            self.state_dir,
            self.cgroup_root,
            self.log,
            node="attack-node",
            env={
                "SCHEDULER_ADMIN_TOKEN": ADMIN_TOKEN,
                **{f"SCHEDULER_{name.upper()}": str(value) for name, value in settings.items()},
            },
        )
        await wait_ready(self.proc, self.log, 1, "attack-node")
        found = re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)/v1", self.log.read_text())
        assert found is not None, self.log.read_text()
        self.port = int(found.group(1))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status_kib(self, field: str) -> int:
        """A ``/proc/<pid>/status`` figure in KiB: VmRSS (now), VmHWM (the peak so far)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def served(dsn: str, state_dir: Path, cgroup_root: str) -> Iterator[Served]:
    agent = Served(dsn, state_dir, cgroup_root)
    yield agent
    agent.stop()


async def wait_state(client: httpx.AsyncClient, job_id: int, states: set[str]) -> dict[str, Any]:
    """The job once its state is one of ``states`` (60 s at most: a loaded host)."""
    with anyio.fail_after(60):
        while True:
            job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}", headers=ADMIN)).json()
            if job["state"] in states:
                return job
            await anyio.sleep(0.05)


def is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body
