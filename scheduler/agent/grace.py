"""A job's graceful stop: SIGTERM to its processes, the kill once its grace has passed.

Cancel and the time limit both stop a job this way (jobs.kill_grace_seconds, capped by the
node's term_grace_seconds). When the first SIGTERM went out is kept in the attempt's monitor
directory (``term_ns``, wall-clock nanoseconds), which outlives the agent: an agent restarted
during the grace kills the job when the grace ends rather than a whole grace later, and sends
no second SIGTERM. Waiting out the grace is a deadline the controller's loop wakes up for (or
the runner's own wait on the monitor), never a sleeping thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from scheduler.timeconv import ns_to_seconds

TERM_FILE = "term_ns"


def read_term(monitor_dir: Path | None) -> int | None:
    """When the attempt's first SIGTERM was sent (None: not yet, or unreadable)."""
    if monitor_dir is None:
        return None
    try:
        text = (monitor_dir / TERM_FILE).read_text()
    except OSError:
        return None
    text = text.strip()
    # Written by this agent only (the job cannot reach the monitor directory); a torn or odd
    # file counts as "not sent", which costs at most one more SIGTERM.
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


def terminate(procs: str | None, monitor_dir: Path | None) -> int:
    """Send SIGTERM to the attempt's processes unless it was sent already; return when it
    first was (wall-clock ns). Blocking: called in a worker thread."""
    sent = read_term(monitor_dir)
    if sent is not None:
        return sent
    now = time.time_ns()
    if monitor_dir is not None:
        # Written before the signal: a crash in between loses the SIGTERM (the kill still
        # comes after the grace), never sends two.
        tmp = monitor_dir / f".{TERM_FILE}.tmp"
        with contextlib.suppress(OSError):
            tmp.write_text(f"{now}\n")
            tmp.replace(monitor_dir / TERM_FILE)
    signal_job(procs, signal.SIGTERM)
    return now


def remaining(term_ns: int, grace_seconds: float) -> float:
    """Seconds of the grace left (<= 0: it is over)."""
    return ns_to_seconds(term_ns) + grace_seconds - time.time()


def signal_job(procs: str | None, sig: int) -> int:
    """Send ``sig`` to every process of the job's cgroup (``procs``: its cgroup.procs file)
    but the init of its pid namespace, which would forward it to the job's main process a
    second time; return how many were signalled."""
    if procs is None:
        return 0
    try:
        with open(procs) as f:
            pids = [int(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return 0
    sent = 0
    for pid in pids:
        if _namespace_init(pid):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent += 1
    return sent


def _namespace_init(pid: int) -> bool:
    """Whether ``pid`` is pid 1 of a pid namespace below ours (the monitor's init)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    fields = line.split()
                    return len(fields) > 2 and fields[-1] == "1"
    except OSError:
        pass
    return False
