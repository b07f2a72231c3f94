"""``scheduler nodes``: every node with its state, lease epoch, lease, capacity and load."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import dumps, escape, record, table
from scheduler.errors import SchedulerError
from scheduler.units import format_bytes

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_nodes(sub: Subparsers) -> None:
    nodes = sub.add_parser(
        "nodes", help="list nodes (state, epoch, lease, capacity, load, labels); drain them"
    )
    add_common(nodes)
    actions = nodes.add_subparsers(dest="node_action", metavar="ACTION")
    add_common(actions.add_parser("list", help="every node (the default)"))
    for action, text in (
        ("drain", "stop new claims on a node; its running jobs finish"),
        ("undrain", "let a drained node claim again"),
        ("forget", "remove a node that is down for good (jobs only it fits then fail)"),
    ):
        parser = actions.add_parser(action, help=text)
        add_common(parser)
        parser.add_argument("name", help="the node's name")


async def cmd_nodes(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler nodes [list|drain NAME|undrain NAME|forget NAME] [--json]``."""

    from scheduler.repos import nodes as node_repo

    action = getattr(args, "node_action", None) or "list"
    conn = await connect(settings)
    try:
        if action != "list":
            return await _change(conn, args, action)
        rows = await node_repo.list_nodes(conn)
    finally:
        await conn.close()
    if args.json:
        print(dumps([record(r) for r in rows]))
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
                "LABELS",
            ],
            [
                [
                    escape(r["name"]),
                    r["state"] + (",drained" if r["drained"] else ""),
                    str(r["epoch"]),
                    f"{r['lease_left_seconds']:.1f}" if r["state"] == "up" else "-",
                    str(r["jobs"]),
                    f"{r['cpu_requested']:g}/{r['cpu']:g}",
                    f"{format_bytes(r['memory_requested'])}/{format_bytes(r['memory_bytes'])}",
                    escape(r["cgroup_driver"]),
                    escape(str(r["version"])),
                    escape(",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))) or "-",
                ]
                for r in rows
            ],
            right=("EPOCH", "LEASE_S", "JOBS", "CPU (USED/CAP)", "MEMORY (USED/CAP)"),
        )
    )
    return 0


async def _change(conn: Any, args: argparse.Namespace, action: str) -> int:
    """Drain, undrain or forget one node (the operator: the database owner's connection)."""
    from scheduler.repos import nodes as node_repo

    if action == "forget":
        if not await node_repo.forget(conn, args.name):
            raise NodeRefused(
                f"node {args.name!r} is not a down node without running jobs: only a node"
                " that is down (its lease expired and was marked down) can be forgotten"
            )
        data: dict[str, Any] = {"name": args.name, "forgotten": True}
        human = f"node {escape(args.name)} forgotten"
    else:
        row = await node_repo.set_drained(conn, args.name, action == "drain")
        if row is None:
            raise NodeRefused(f"no node named {args.name!r} (scheduler nodes lists them)")
        data = record(row)
        verb = "drained: it claims nothing new" if row["drained"] else "undrained: it claims again"
        human = f"node {escape(row['name'])} {verb}"
    print(dumps(data) if args.json else human)
    return 0


class NodeRefused(SchedulerError):
    """The node named does not exist, or is not in a state the action needs."""


NODES = Command("nodes", add_nodes, cmd_nodes)
