"""The fork server dies with a launch unanswered: it forked the monitor, then died before it
told the agent the pid. The agent finds that monitor in its run directory and supervises it,
so the job runs once and is billed once; the next launches go through a new server."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from tests.faults.conftest import Agents, no_jobs_left
from tests.faults.counts import Workload, assert_counts, tally

pytestmark = pytest.mark.anyio


def events(log: Path) -> list[str]:
    found = []
    for line in log.read_text().splitlines():
        try:
            found.append(json.loads(line).get("event", ""))
        except ValueError:
            continue
    return found


async def test_a_launch_left_unanswered_is_found_and_supervised(
    db: asyncpg.Connection, state_dir: Path, cgroup_root: str, workload: Workload, agents: Agents
) -> None:
    await agents.start(failpoints="fork_server_unanswered=error")
    [first] = await workload.submit(db, "sleep 1")
    later = await workload.submit(db, "sleep 0.5", 10)
    hit = {first: 1}
    result = await tally(db, workload, fault="l: fork server dies unanswered", hit=hit)
    assert_counts(result)
    seen = events(agents.log("fault-node"))
    assert seen.count("fork_server_started") >= 2
    assert "fork_server_lost" in seen
    assert "launch_unanswered" in seen
    assert "launch_found" in seen
    assert len(later) == 10
    await no_jobs_left(workload, [state_dir / "run"], [cgroup_root])
