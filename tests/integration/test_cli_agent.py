"""The CLI with a live agent, as a separate process the way a person runs it: submit --wait
streams the job's output and exits with a code that tells the job's own exit from a start
failure; logs --follow and logs --json; the HTTP log follow of a job still queued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest

from tests.conftest import AgentHandle

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.postgres]


def cli_env(agent: AgentHandle) -> dict[str, str]:
    s = agent.settings
    return {
        **os.environ,
        "SCHEDULER_DATABASE_URL": str(s.db.url),
        "SCHEDULER_STATE_DIR": str(s.paths.state),
        "SCHEDULER_NODE_NAME": s.node.name,
    }


async def cli(agent: AgentHandle, *argv: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "scheduler.cli", *argv],
            env=cli_env(agent),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    )


async def test_submit_wait_exits_with_the_jobs_code_and_shows_its_output(
    agent: AgentHandle,
) -> None:
    done = await cli(agent, "submit", "--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3, done
    assert done.stdout == "out\n"
    assert "err\n" in done.stderr and "failed (exit code 3)" in done.stderr
    quiet = await cli(agent, "submit", "--wait", "--quiet", "--", "sh", "-c", "echo out")
    assert quiet.returncode == 0 and quiet.stdout == ""


@pytest.mark.parametrize(
    ("argv", "code", "why"),
    [
        (["/no/such/binary"], 127, "No such file or directory"),
        (["/etc"], 126, "Permission denied"),  # a directory cannot be executed
        (["--cwd", "/no/such/dir", "--", "true"], 125, "cwd"),
        (["sh", "-c", "kill -TERM $$"], 128 + 15, "signal 15"),
        (["sh", "-c", "exit 127"], 127, "exit code 127"),
    ],
)
async def test_a_start_failure_has_its_own_exit_code(
    agent: AgentHandle, argv: list[str], code: int, why: str
) -> None:
    args = argv if argv[0] == "--cwd" else ["--", *argv]
    done = await cli(agent, "submit", "--wait", *args)
    assert done.returncode == code, done
    assert why in done.stderr, done.stderr


async def test_submit_wait_streams_while_the_job_runs(agent: AgentHandle) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "submit",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo first; sleep 4; echo second",
        ],
        env=cli_env(agent),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            seen_at = time.monotonic()
            assert line == b"first\n"
            assert proc.poll() is None  # the job still runs: the output came as it was made
            rest = await anyio.to_thread.run_sync(proc.stdout.read)
            assert rest == b"second\n"
            assert await anyio.to_thread.run_sync(proc.wait) == 0
            assert time.monotonic() - seen_at > 2
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_logs_follow_and_json(agent: AgentHandle) -> None:
    started = await cli(agent, "submit", "--", "sh", "-c", "echo one; sleep 2; echo two >&2")
    job = started.stdout.strip()
    followed = await cli(agent, "logs", "--follow", job)
    assert followed.returncode == 0, followed
    assert followed.stdout == "one\n" and followed.stderr == "two\n"
    as_json = await cli(agent, "logs", "--json", job)
    data = json.loads(as_json.stdout)
    assert data == {"id": int(job), "attempt": 1, "stdout": "one\n", "stderr": "two\n"}


async def test_http_follow_of_a_queued_job_waits_for_its_output(agent: AgentHandle) -> None:
    headers = {"Authorization": "Bearer test-admin-token"}
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=60) as api:
        r = await api.post(
            "/v1/jobs",
            headers=headers,
            json={"argv": ["sh", "-c", "echo late"], "run_at": "2999-01-01T00:00:00Z"},
        )
        assert r.status_code == 201, r.text
        job = r.json()["id"]

        async def release() -> None:
            await anyio.sleep(1)
            await api.post(f"/v1/jobs/{job}/cancel", headers=headers)

        # A queued job that never starts ends the stream when it is cancelled, empty.
        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            body = await api.get(f"/v1/jobs/{job}/logs?follow=true", headers=headers)
        assert body.status_code == 200 and body.text == ""
        # A job that starts in 2 s: the follow asked while it is queued waits for its output.
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        r = await api.post(
            "/v1/jobs", headers=headers, json={"argv": ["sh", "-c", "echo soon"], "run_at": soon}
        )
        followed = await api.get(f"/v1/jobs/{r.json()['id']}/logs?follow=true", headers=headers)
        assert followed.text == "soon\n"


async def test_http_unknown_tenant_is_a_plain_422(agent: AgentHandle) -> None:
    headers = {"Authorization": "Bearer test-admin-token"}
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=60) as api:
        r = await api.post("/v1/jobs", headers=headers, json={"argv": ["true"], "tenant": "nobody"})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "unknown tenant 'nobody'" in detail
        assert "HINT" not in detail and "INSERT" not in detail and "\n" not in detail
