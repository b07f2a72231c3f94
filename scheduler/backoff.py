"""One retry delay for every loop that waits on something that failed: exponential growth
with decorrelated jitter, a cap, and a reset once the thing works again.

Without jitter, every agent that lost its database at the same moment (a Postgres restart)
retries at the same instants, doubling in lockstep, and they all reconnect at once. Each
delay here is drawn between ``first`` and three times the previous one (the "decorrelated
jitter" of Marc Brooker's note on the AWS architecture blog, 2015), never above ``cap``: it
grows about as fast as doubling, never falls below ``first``, and two agents' sequences
part from the first retry on. Pure: no clock, no I/O; the caller sleeps.
"""

from __future__ import annotations

import random


class Backoff:
    """The delays before successive retries: ``next()`` after each failure, ``reset()``
    once the operation succeeded. ``rng``: a seeded one for tests; by default each instance
    draws from its own generator seeded by the OS, so no two agents share a sequence."""

    def __init__(self, first: float, cap: float, *, rng: random.Random | None = None) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={first} cap={cap}")
        self.first = first
        self.cap = cap
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (not crypto)
        self._last = first
        self.failures = 0

    def next(self) -> float:
        """The delay before the next retry, in seconds, in ``[first, cap]``."""
        delay = min(self.cap, self._rng.uniform(self.first, self._last * 3))
        self._last = delay
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Start again from ``first`` (the operation worked)."""
        self._last = self.first
        self.failures = 0
