"""File descriptors the agent keeps for its own work.

Every HTTP connection is a descriptor, and so is every job's output file, cgroup file, monitor
pipe and database socket. The agent raises its soft RLIMIT_NOFILE to the hard limit at start
and lets HTTP connections use at most half of it, so a flood of clients can never take the
descriptors that launching, recording and renewing the lease need.
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger(__name__)

# At least this share of the descriptor limit stays with the agent's own work.
AGENT_SHARE = 0.5


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (hard, soft):
        # Linux refuses an infinite RLIMIT_NOFILE; treat it as the kernel's nr_open.
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("nofile_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft


def http_connection_cap(configured: int, nofile: int) -> int:
    """The HTTP connection limit in force: the configured one, at most the HTTP share of
    ``nofile`` (at least 16, so a tiny limit still serves health checks)."""
    share = max(16, int(nofile * (1 - AGENT_SHARE)))
    if configured > share:
        log.warning(
            "http_max_connections_lowered",
            configured=configured,
            used=share,
            nofile=nofile,
            reason="the agent keeps half of its file descriptors for its own work",
        )
        return share
    return configured
