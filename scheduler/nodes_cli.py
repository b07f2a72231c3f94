"""``scheduler nodes``: every node with its state, lease epoch, lease, capacity and load."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from scheduler import store
from scheduler.cli_output import escape, table
from scheduler.config import Settings
from scheduler.db.pool import connect_settings
from scheduler.db.queries import q
from scheduler.units import format_bytes

Command = Callable[[Settings, argparse.Namespace], Awaitable[int]]


def add_parsers(
    sub: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> dict[str, Command]:
    """Add ``nodes`` to ``sub``; return its handler by name."""
    add_common(sub.add_parser("nodes", help="list nodes: state, epoch, lease, capacity, load"))
    return {"nodes": cmd_nodes}


async def cmd_nodes(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler nodes [--json]``."""
    conn = await connect_settings(settings)
    try:
        rows = await conn.fetch(q("list_nodes"))
    finally:
        await conn.close()
    if args.json:
        print(store.dumps([store.record_to_dict(r) for r in rows]))
        return 0
    print(
        table(
            [
                "NODE",
                "STATE",
                "EPOCH",
                "LEASE_S",
                "JOBS",
                "CPU (USED/CAP)",
                "MEMORY (USED/CAP)",
                "DRIVER",
                "VERSION",
            ],
            [
                [
                    escape(r["name"]),
                    r["state"],
                    str(r["epoch"]),
                    f"{r['lease_left_seconds']:.1f}" if r["state"] == "up" else "-",
                    str(r["jobs"]),
                    f"{r['cpu_requested']:g}/{r['cpu']:g}",
                    f"{format_bytes(r['memory_requested'])}/{format_bytes(r['memory_bytes'])}",
                    escape(r["cgroup_driver"]),
                    escape(str(r["version"])),
                ]
                for r in rows
            ],
            right=("EPOCH", "LEASE_S", "JOBS", "CPU (USED/CAP)", "MEMORY (USED/CAP)"),
        )
    )
    return 0
