"""The memory all request bodies being read at once may hold, across requests."""

from __future__ import annotations

from scheduler.api.bodies import MAX_BODY_BYTES
from scheduler.api.problems import Problem

# The connection is closed after answers carrying this: the rest of the body is never read.
CLOSE = {"Connection": "close"}
# All bodies being read at once hold at most this much (64 bodies of the largest size): a
# thousand connections each sending most of a MiB must not cost the agent a GB.
BODIES_BUDGET_BYTES = 64 * MAX_BODY_BYTES


class BodyBudget:
    """Bytes held by the bodies being read now, across requests (the event loop's only)."""

    def __init__(self, limit: int = BODIES_BUDGET_BYTES) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Problem(
                503,
                "too many request bodies are being received at once; retry shortly",
                headers={**CLOSE, "Retry-After": "1"},
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
