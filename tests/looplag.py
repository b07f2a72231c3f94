"""How long the event loop could not run a task that was ready, less the time its thread
only waited for a CPU: a loop blocked by a call (a sleep, a slow syscall, a long callback)
shows, a loop starved by a busy machine does not.

A probe task sleeps ``period`` over and over; each wake-up later than asked is a stall of
the loop. The loop thread's run-queue wait over the same stretch (the second field of
/proc/self/task/<tid>/schedstat, in ns) is the part a busy machine caused; the rest the loop
spent blocked or busy in a callback.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import anyio


def _run_delay_ns(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
        return int(f.read().split()[1])


@dataclass
class LoopLag:
    """Run :meth:`run` as a task on the loop to watch; ``stalls`` lists (blocked s, late s)
    of each wake-up blocked for more than ``record_above`` seconds."""

    period: float = 0.005
    record_above: float = 0.01
    stalls: list[tuple[float, float]] = field(default_factory=list)
    wakeups: int = 0

    @property
    def worst(self) -> float:
        """The longest the loop was blocked (seconds) since the probe started."""
        return max((blocked for blocked, _ in self.stalls), default=0.0)

    async def run(self) -> None:
        tid = threading.get_native_id()  # the loop's own thread: this task runs on it
        while True:
            start = time.monotonic()
            waited = _run_delay_ns(tid)
            await anyio.sleep(self.period)
            late = time.monotonic() - start - self.period
            blocked = late - (_run_delay_ns(tid) - waited) / 1e9
            self.wakeups += 1
            if blocked > self.record_above:
                self.stalls.append((blocked, late))
