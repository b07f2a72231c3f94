"""Failpoints: named places where a fault test stops the agent at an exact moment.

A test facility, off unless ``SCHEDULER_FAILPOINTS`` is set (for example
``after_claim=stop,before_record=stop``), read once when ``serve`` starts. Actions:

- ``stop``: the agent logs ``failpoint_hit`` and stops itself with SIGSTOP, so nothing more of
  it runs (no task, no thread) until the test SIGKILLs it, or SIGCONTs it to let it go on;
- ``error``: the point raises ``ConnectionResetError``, as if the database connection broke
  there (after a commit: the commit happened, its answer never arrived).

Each failpoint fires once per process. Unset, :func:`hit` is one lookup in an empty dict.

The points: ``in_claim_lock`` (inside a claim's transaction, holding the lock that serialises
every node's claims), ``after_claim`` (a claim committed rows, no monitor started yet),
``before_record`` (an attempt ended and its final counters were read, nothing committed),
``after_record`` (its end committed, its cgroup not removed yet) and
``fork_server_unanswered`` (acted on by the C fork server, whatever the action: it forks the
next monitor and dies without answering; see runtime/forkserver.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

import structlog

from scheduler.errors import ConfigError

log = structlog.get_logger(__name__)
POINTS = frozenset(
    {"in_claim_lock", "after_claim", "before_record", "after_record", "fork_server_unanswered"}
)
ACTIONS = frozenset({"stop", "error"})
_armed: dict[str, str] = {}


def parse(spec: str) -> dict[str, str]:
    """The failpoints armed by ``spec`` (``name=action`` items, comma-separated)."""
    armed: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if name not in POINTS or action not in ACTIONS:
            raise ConfigError(
                f"SCHEDULER_FAILPOINTS: {item!r} is not NAME=ACTION with NAME one of"
                f" {', '.join(sorted(POINTS))} and ACTION one of {', '.join(sorted(ACTIONS))}"
            )
        armed[name] = action
    return armed


def configure(environ: Mapping[str, str] | None = None) -> None:
    """Arm the failpoints named in ``SCHEDULER_FAILPOINTS`` (once, at start-up)."""
    environ = os.environ if environ is None else environ
    _armed.clear()
    _armed.update(parse(environ.get("SCHEDULER_FAILPOINTS", "")))
    if _armed:
        log.warning("failpoints_armed", failpoints=dict(sorted(_armed.items())))


def take(name: str) -> bool:
    """Whether failpoint ``name`` is armed, disarming it (for points acted on elsewhere)."""
    return _armed.pop(name, None) is not None


def hit(name: str) -> None:
    """Act here if failpoint ``name`` is armed (once): stop this process, or raise."""
    if name not in _armed:
        return
    action = _armed.pop(name)
    log.warning("failpoint_hit", failpoint=name, action=action, pid=os.getpid())
    if action == "error":
        raise ConnectionResetError(f"failpoint {name}: the database connection broke here")
    os.kill(os.getpid(), signal.SIGSTOP)
