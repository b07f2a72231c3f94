"""When the end of an attempt wakes the claim loop: only when it freed a slot of the node's
own limit (max_running). Capacity in Postgres is freed by the attempt's record, whose commit
wakes every dispatcher (scheduler_done); a claim at the end itself would find nothing new."""

from __future__ import annotations

from typing import cast

import asyncpg
import pytest

from scheduler.agent.dispatcher import Dispatcher
from scheduler.jobs import Job
from scheduler.policy.admission import Capacity

pytestmark = pytest.mark.anyio


async def never_run(job: Job) -> None:
    raise AssertionError(f"nothing is claimed here: {job}")


async def test_an_end_wakes_the_claim_loop_only_when_max_running_was_reached() -> None:
    wakes: list[str] = []
    dispatcher = Dispatcher(
        cast(asyncpg.Pool, None),  # no claim is made in this test
        node="n1",
        max_running=2,
        poll_interval=2,
        run_job=never_run,
        capacity=Capacity(cpu=2, memory_bytes=2**30),
        on_wake=lambda: wakes.append("wake"),
    )
    dispatcher.adopt(1)
    dispatcher.adopt(2)
    dispatcher.release(1)  # the node was at max_running: a slot is free now
    assert (wakes, dispatcher.running) == (["wake"], 1)
    dispatcher.release(2)  # below max_running: its record's commit will wake the loop
    assert (wakes, dispatcher.running) == (["wake"], 0)
