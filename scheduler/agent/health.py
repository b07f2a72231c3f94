"""Conditions that keep the agent from doing all of its work, for /readyz and the log.

Each condition has a key, set with a reason while it holds and cleared once it is over; the
log gets one line when it starts and one when it ends (not one per failed retry).
"""

from __future__ import annotations

from typing import Literal

import structlog

from scheduler.accounting.metrics import ServiceStats

log = structlog.get_logger(__name__)

Condition = Literal["state_disk", "descriptors", "usage", "completions", "unkillable"]
# (event when the condition starts, event when it ends): the names operators grep for.
EVENTS: dict[Condition, tuple[str, str]] = {
    "state_disk": ("state_disk_full", "state_disk_ok"),
    "descriptors": ("file_descriptors_exhausted", "file_descriptors_ok"),
    "usage": ("usage_writes_failing", "usage_writes_ok"),
    "completions": ("record_writes_failing", "record_writes_ok"),
    # Logged per job by agent/unkillable.py; the condition itself is for /readyz.
    "unkillable": ("unkillable_jobs", "unkillable_jobs_gone"),
}


class Health:
    """The current conditions, mutated on the event loop only."""

    def __init__(self, stats: ServiceStats | None = None) -> None:
        self._reasons: dict[Condition, str] = {}
        self._stats = stats
        self._publish()

    def _publish(self) -> None:
        if self._stats is not None:
            self._stats.conditions = {c: int(c in self._reasons) for c in EVENTS}

    def fail(self, condition: Condition, reason: str) -> None:
        """``condition`` holds (logged when it starts; the reason kept is the latest)."""
        if condition not in self._reasons:
            log.error(EVENTS[condition][0], reason=reason)
        self._reasons[condition] = reason
        self._publish()

    def ok(self, condition: Condition) -> None:
        """``condition`` is over (logged once)."""
        if self._reasons.pop(condition, None) is not None:
            log.info(EVENTS[condition][1])
            self._publish()

    def reason(self, condition: Condition) -> str | None:
        return self._reasons.get(condition)

    def reasons(self) -> list[str]:
        """Every current reason, in a stable order."""
        return [self._reasons[c] for c in EVENTS if c in self._reasons]
