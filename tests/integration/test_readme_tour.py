"""README.md's five-minute tour, run as written against a real `scheduler serve` process with
the embedded default (no database URL: the agent starts its own Postgres and makes the admin
token), so the README cannot drift from what the code does.

The commands are the fenced blocks README.md marks with ``<!-- tour -->``, read from the file
at test time. Two things differ from a person's machine and are substituted, nothing else:
the default state directory /var/lib/scheduler becomes this test's own, and the HTTP address
127.0.0.1:8420 becomes the port the agent bound (tests run in parallel). The blocks run in
one bash with errexit and pipefail: any command that fails fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.agent_process import start_serve, stop
from tests.conftest import slow

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TOUR_BLOCK = re.compile(r"<!-- tour -->\s*\n```sh\n(.*?)\n```", re.DOTALL)
DEFAULT_STATE = "/var/lib/scheduler"
DEFAULT_HTTP = "127.0.0.1:8420"
NODE = "tour-node"

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.postgres]


def tour_blocks() -> list[str]:
    return TOUR_BLOCK.findall(README.read_text())


def test_readme_marks_the_tour() -> None:
    blocks = tour_blocks()
    # setup, SQL, CLI, billing, HTTP: a block dropped from the marks would go untested.
    assert len(blocks) == 5, blocks
    text = "\n".join(blocks)
    for step in ("submit", "--wait", "freeze", "cancel", "billing export", "tokens create"):
        assert step in text


async def _http_address(log: Path) -> str:
    with anyio.fail_after(slow(120)):
        while True:
            found = re.search(r"HTTP API on http://([0-9.]+:[0-9]+)/v1", log.read_text())
            if found:
                return found.group(1)
            await anyio.sleep(0.1)


async def test_the_tour_runs_as_written(state_dir: Path, cgroup_root: str) -> None:
    state_dir.chmod(0o755)  # the embedded Postgres runs as its own user below it
    log = state_dir.parent / f"{state_dir.name}.serve.log"
    proc = start_serve("", state_dir, cgroup_root, log, node=NODE)  # the defaults of a user
    try:
        with anyio.fail_after(slow(120)):
            while "admin token" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                await anyio.sleep(0.1)
        address = await _http_address(log)
        script = "\n".join(tour_blocks())
        script = script.replace(DEFAULT_STATE, str(state_dir)).replace(DEFAULT_HTTP, address)
        env = {
            **os.environ,
            "SCHEDULER_STATE_DIR": str(state_dir),
            "SCHEDULER_CGROUP_ROOT": cgroup_root,
            "SCHEDULER_NODE_NAME": NODE,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        env.pop("SCHEDULER_DATABASE_URL", None)
        env.pop("SCHEDULER_ADMIN_TOKEN", None)
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                ["bash", "-x", "-e", "-u", "-o", "pipefail", "-c", script],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=slow(300),
                check=False,
            )
        )
        report = (
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\nagent:\n{log.read_text()[-3000:]}"
        )
        assert done.returncode == 0, report
        # What the tour promises a reader, checked on its output.
        assert "hi\n" in done.stdout, report  # submit --wait streamed the job's output
        assert "hello\n" in done.stdout, report  # logs --follow 1 printed the SQL job's output
        assert "hello from acme" in done.stdout, report  # the tenant token read its job's log
        assert "the books add up" in done.stderr, report
        assert "scheduler_tenant_cpu" in done.stdout, report
    finally:
        stop(proc)
        log.unlink(missing_ok=True)
