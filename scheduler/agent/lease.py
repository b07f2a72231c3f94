"""The node lease: an agent registers its node name, and holds it at one epoch until it stops.

Two agents must never run under one node name. A name whose lease still runs is refused,
unless the agent that held it is known to be gone: it stopped (its pid was cleared), or it
ran on this host (same boot id) and its pid is no longer alive (it was SIGKILLed).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import asyncpg
import structlog

from scheduler.errors import NodeNameTaken
from scheduler.policy.admission import Capacity
from scheduler.repos import lease as lease_repo

log = structlog.get_logger(__name__)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class NodeLease:
    """The node this agent holds, and the epoch its claims carry."""

    name: str
    epoch: int


def boot_id() -> str:
    """This boot of this host (a pid is only meaningful within one boot)."""
    return BOOT_ID.read_text().strip()


def version() -> str:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("scheduler")
    return "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def register(
    pool: asyncpg.Pool,
    name: str,
    *,
    lease_seconds: float,
    driver: str,
    capacity: Capacity,
    labels: dict[str, str] | None = None,
) -> NodeLease:
    """Take node ``name`` at its next epoch (with its ``labels``), or raise
    :class:`NodeNameTaken`.

    Attempts still recorded on the node (nobody marked it down) move to the new epoch.
    """
    me = boot_id()
    async with pool.acquire() as conn, conn.transaction():
        await lease_repo.lock_node(conn, name)
        row = await lease_repo.get_node(conn, name)
        if (
            row is not None
            and row["state"] == "up"
            and row["lease_live"]
            and row["pid"] is not None
            and (row["boot_id"] != me or _alive(row["pid"]))
        ):
            where = "this host" if row["boot_id"] == me else f"host boot id {row['boot_id']}"
            raise NodeNameTaken(
                f"node name {name!r} is held by a live agent (pid {row['pid']} on {where},"
                f" epoch {row['epoch']}, lease until {row['lease_expires_at']:%Y-%m-%d %H:%M:%S});"
                f" stop it or give this agent another --node-name"
            )
        epoch = await lease_repo.register_node(
            conn,
            name,
            lease_seconds=lease_seconds,
            version=version(),
            driver=driver,
            cpu=capacity.cpu,
            memory_bytes=capacity.memory_bytes,
            boot_id=me,
            pid=os.getpid(),
            labels=labels or {},
        )
        adopted = await lease_repo.adopt_node_jobs(conn, name, epoch)
    log.info("node_registered", epoch=epoch, lease_seconds=lease_seconds, adopted_jobs=adopted)
    return NodeLease(name, epoch)


async def release(pool: asyncpg.Pool, lease: NodeLease) -> None:
    """Say this agent stopped; its jobs stay protected by the lease until it expires."""
    await lease_repo.release_node(pool, lease.name, lease.epoch)
