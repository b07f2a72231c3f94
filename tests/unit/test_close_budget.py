"""The agent's database closes share one bound (agent/service.py CloseBudget): a close that
hangs is cut off and terminated, and closes after it get only what is left of the bound."""

from __future__ import annotations

import anyio
import pytest

from scheduler.agent.service import CloseBudget

pytestmark = pytest.mark.anyio


async def test_a_hanging_close_is_terminated_and_the_bound_is_shared() -> None:
    budget = CloseBudget(1.0)
    events: list[str] = []

    async def hangs() -> None:
        await anyio.sleep(60)

    async def quick() -> None:
        events.append("quick closed")

    start = anyio.current_time()
    await budget.close(quick, lambda: events.append("quick terminated"))
    await budget.close(hangs, lambda: events.append("first terminated"))
    await budget.close(hangs, lambda: events.append("second terminated"))
    elapsed = anyio.current_time() - start
    assert events == ["quick closed", "first terminated", "second terminated"]
    # One bound for all (one per close would take 2 s or more).
    assert 1.0 <= elapsed < 2.0


async def test_a_close_runs_to_its_end_when_the_caller_is_cancelled() -> None:
    budget = CloseBudget(5)
    closed = anyio.Event()

    async def slow_close() -> None:
        await anyio.sleep(0.05)
        closed.set()

    with anyio.CancelScope() as scope:
        scope.cancel()
        await budget.close(slow_close, None)
    assert closed.is_set()
