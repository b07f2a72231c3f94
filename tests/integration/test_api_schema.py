"""schemathesis against the live server's /openapi.json: no 500s, every response as documented."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import AgentHandle, slow

pytestmark = pytest.mark.anyio


@pytest.mark.timeout(600)
async def test_openapi_contract_holds_under_generated_requests(
    agent: AgentHandle, tmp_path: Path
) -> None:
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    base = f"http://{agent.ready.http}"
    command = [
        st,
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "-H",
        "Authorization: Bearer test-admin-token",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--request-timeout",
        "20",
        "--generation-deterministic",
        "--no-color",
    ]
    with anyio.fail_after(slow(300)):
        # schemathesis keeps a cache in its working directory: not in the checkout.
        result = await anyio.run_process(command, check=False, cwd=tmp_path)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output[-6000:]
