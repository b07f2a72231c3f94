"""``scheduler tenants list|add|set|freeze|thaw|grant-sql|revoke-sql|budget``: the tenants,
their limits and their SQL roles. They go through the repositories (:mod:`scheduler.repos`)
like every other client, imported when the handler runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scheduler import jobdefaults
from scheduler.cli.args import INT4_MAX, bounded_int
from scheduler.cli.budgets import add_budget, cmd_budget
from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import cell, dumps, escape, out, record, table
from scheduler.names import NAME_SHAPE
from scheduler.sqlaccess import CONNECTION_LIMIT
from scheduler.units import format_bytes, parse_cores, parse_size

if TYPE_CHECKING:
    import asyncpg

    from scheduler.config import Settings


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A value, or 'none' to clear the limit."""

    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "unlimited") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_tenants(sub: Subparsers) -> None:
    tenants = sub.add_parser("tenants", help="list, add, set, freeze or thaw tenants")
    add_common(tenants)
    actions = tenants.add_subparsers(dest="tenant_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every tenant with its limits and job counts")
    add_common(listing)
    for action in ("add", "set"):
        parser = actions.add_parser(action, help=f"{action} a tenant ('none' clears a limit)")
        add_common(parser)
        parser.add_argument("name", help=f"the tenant's name ({NAME_SHAPE})")
        unset = argparse.SUPPRESS
        parser.add_argument(
            "--parent", type=_optional(str), default=unset, help="parent tenant (none: a root)"
        )
        parser.add_argument(
            "--cpu",
            dest="cpu_limit",
            type=_optional(parse_cores),
            default=unset,
            help="cores for the whole subtree, e.g. 2 (default: unlimited)",
        )
        parser.add_argument(
            "--memory",
            dest="memory_limit_bytes",
            type=_optional(parse_size),
            default=unset,
            help="memory for the whole subtree, e.g. 4G (default: unlimited)",
        )
        parser.add_argument(
            "--pids",
            dest="pids_limit",
            type=_optional(bounded_int(1, INT4_MAX)),
            default=unset,
            help="processes for the whole subtree (default: unlimited)",
        )
        parser.add_argument(
            "--max-running",
            dest="max_running_jobs",
            type=_optional(bounded_int(0, INT4_MAX)),
            default=unset,
            help="jobs running at once (default: unlimited)",
        )
        parser.add_argument(
            "--weight",
            type=bounded_int(1, 10000),
            default=unset,
            help=f"fair-share weight in [1, 10000] (default: {jobdefaults.TENANT_WEIGHT})",
        )
        parser.add_argument(
            "--io-read",
            dest="io_read_bps",
            type=_optional(parse_size),
            default=unset,
            help="disk read bytes per second, e.g. 50M",
        )
        parser.add_argument(
            "--io-write",
            dest="io_write_bps",
            type=_optional(parse_size),
            default=unset,
            help="disk write bytes per second, e.g. 50M",
        )
    for action in ("freeze", "thaw"):
        parser = actions.add_parser(action, help=f"{action} a tenant and its subtree")
        add_common(parser)
        parser.add_argument("name", help="the tenant's name")
    grant = actions.add_parser(
        "grant-sql", help="create a Postgres role that sees only this tenant's rows (RLS)"
    )
    add_common(grant)
    grant.add_argument("name", help="the tenant's name")
    grant.add_argument(
        "--connection-limit",
        type=int,
        default=CONNECTION_LIMIT,
        help=f"sessions the role may hold at once (default {CONNECTION_LIMIT})",
    )
    revoke = actions.add_parser("revoke-sql", help="drop the tenant's Postgres role")
    add_common(revoke)
    revoke.add_argument("name", help="the tenant's name")
    add_budget(actions)


async def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler tenants list|add|set|freeze|thaw``."""
    from scheduler import requests
    from scheduler.repos import tenants as tenants_repo

    conn = await connect(settings)
    try:
        if args.tenant_action == "list":
            rows = await tenants_repo.list_tenants(conn)
            _print_tenants(args, rows)
            return 0
        if args.tenant_action in ("grant-sql", "revoke-sql"):
            return await _sql_access(conn, args)
        if args.tenant_action == "budget":
            return await cmd_budget(conn, args)
        if args.tenant_action in ("freeze", "thaw"):
            row = await tenants_repo.set_tenant_frozen(
                conn, args.name, args.tenant_action == "freeze"
            )
        else:
            # Settings not given are absent (SUPPRESS); 'none' is present as None.
            fields = {f: getattr(args, f) for f in requests.TENANT_FIELDS if hasattr(args, f)}
            if args.tenant_action == "add":
                row = await tenants_repo.add_tenant(conn, args.name, **fields)
            else:
                row = await tenants_repo.set_tenant(conn, args.name, **fields)
    finally:
        await conn.close()
    out(args, record(row), _describe_tenant(row))
    return 0


async def _sql_access(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    """``scheduler tenants grant-sql|revoke-sql NAME``."""
    from scheduler.errors import SqlAccessError
    from scheduler.sqlaccess import grant_sql, revoke_sql

    if args.tenant_action == "grant-sql":
        role, password = await grant_sql(conn, args.name, connection_limit=args.connection_limit)
        data = {"tenant": args.name, "role": role, "password": password}
        human = f"role {role} (password {password}) sees only tenant {args.name}'s rows"
    else:
        if not await revoke_sql(conn, args.name):
            raise SqlAccessError(f"tenant {args.name!r} has no SQL role")
        data, human = {"tenant": args.name, "revoked": True}, f"role of {args.name} dropped"
    print(dumps(data) if args.json else human)
    return 0


def _describe_tenant(row: Any) -> str:
    parts = [f"tenant {escape(row['name'])}"]
    if row["parent"]:
        parts.append(f"parent={escape(row['parent'])}")
    parts.append(f"weight={row['weight']}")
    for key, label in (
        ("cpu_limit", "cpu"),
        ("pids_limit", "pids"),
        ("max_running_jobs", "max_running"),
    ):
        if row[key] is not None:
            parts.append(f"{label}={row[key]}")
    if row["memory_limit_bytes"] is not None:
        parts.append(f"memory={format_bytes(row['memory_limit_bytes'])}")
    if row["frozen"]:
        parts.append("FROZEN (operator hold)" if row.get("operator_hold") else "FROZEN")
    return " ".join(parts)


def _frozen_column(row: Any) -> str:
    """yes, no, or "hold" for an operator's freeze that only the operator lifts."""
    if not row["frozen"]:
        return "no"
    return "hold" if row.get("operator_hold") else "yes"


def _print_tenants(args: argparse.Namespace, rows: list[Any]) -> None:
    if args.json:
        print(dumps([record(r) for r in rows]))
        return
    # One (header, cell) pair per column: a new column is one more pair.
    columns = [
        [
            ("NAME", escape(r["name"])),
            ("PARENT", cell(r["parent"])),
            ("WEIGHT", str(r["weight"])),
            ("CPU", cell(r["cpu_limit"])),
            ("MEMORY", format_bytes(r["memory_limit_bytes"])),
            ("MAXRUN", cell(r["max_running_jobs"])),
            ("ACTIVE", str(r["active_jobs"])),
            ("QUEUED", str(r["queued_jobs"])),
            ("UID", cell(r.get("uid"))),
            ("FROZEN", _frozen_column(r)),
        ]
        for r in rows
    ]
    headers = [h for h, _ in columns[0]] if columns else ["NAME", "WEIGHT", "FROZEN"]
    print(
        table(
            headers,
            [[c for _, c in row] for row in columns],
            right=("WEIGHT", "CPU", "MEMORY", "MAXRUN", "ACTIVE", "QUEUED", "UID"),
        )
    )


TENANTS = Command("tenants", add_tenants, cmd_tenants, logs=True)
