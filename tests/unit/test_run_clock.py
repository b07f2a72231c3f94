"""The per-attempt run clock: frozen time does not count against the time limit."""

from __future__ import annotations

import anyio
import pytest

from scheduler.agent.attempts import RunClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_paused_time_is_not_counted() -> None:
    t = FakeTime()
    clock = RunClock(now=t)
    t.now += 0.4
    clock.pause()
    t.now += 2.0
    assert clock.running_seconds() == pytest.approx(0.4)
    clock.pause()  # twice is harmless
    clock.resume()
    t.now += 0.6
    assert clock.running_seconds() == pytest.approx(1.0)
    clock.resume()
    assert not clock.paused


@pytest.mark.anyio
async def test_wait_used_waits_out_a_pause() -> None:
    clock = RunClock()

    async def freeze_for_a_while() -> None:
        await anyio.sleep(0.05)
        clock.pause()
        await anyio.sleep(0.3)
        clock.resume()

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(freeze_for_a_while)
        await clock.wait_used(0.1)
    # 0.1 s of running plus the 0.3 s pause: it cannot have returned before 0.4 s.
    assert anyio.current_time() - start >= 0.39
    assert clock.running_seconds() >= 0.1
