"""The steering commands of ``scheduler``: cancel, freeze, thaw a job; list, add, set, freeze,
thaw tenants. They go through :mod:`scheduler.store` like every other client."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from scheduler import store
from scheduler.config import Settings
from scheduler.db.pool import connect_settings
from scheduler.jobs import DesiredState
from scheduler.sqlaccess import SqlAccessError, grant_sql, revoke_sql
from scheduler.units import format_bytes, parse_cores, parse_size

Command = Callable[[Settings, argparse.Namespace], Awaitable[int]]
_DESIRED: dict[str, DesiredState] = {"cancel": "cancelled", "freeze": "frozen", "thaw": "running"}


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A value, or 'none' to clear the limit."""

    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "unlimited") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_parsers(
    sub: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> dict[str, Command]:
    """Add the steering sub-commands to ``sub``; return their handlers by name."""
    for verb, desired in _DESIRED.items():
        parser = sub.add_parser(verb, help=f"set a job's desired_state to {desired}")
        add_common(parser)
        parser.add_argument("id", type=int)
    tenants = sub.add_parser("tenants", help="list, add, set, freeze or thaw tenants")
    add_common(tenants)
    actions = tenants.add_subparsers(dest="tenant_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every tenant with its limits and job counts")
    add_common(listing)
    for action in ("add", "set"):
        parser = actions.add_parser(action, help=f"{action} a tenant ('none' clears a limit)")
        add_common(parser)
        parser.add_argument("name")
        unset = argparse.SUPPRESS
        parser.add_argument("--parent", type=_optional(str), default=unset)
        parser.add_argument("--cpu", dest="cpu_limit", type=_optional(parse_cores), default=unset)
        parser.add_argument(
            "--memory", dest="memory_limit_bytes", type=_optional(parse_size), default=unset
        )
        parser.add_argument("--pids", dest="pids_limit", type=_optional(int), default=unset)
        parser.add_argument(
            "--max-running", dest="max_running_jobs", type=_optional(int), default=unset
        )
        parser.add_argument("--weight", type=int, default=unset)
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
        parser.add_argument("name")
    grant = actions.add_parser(
        "grant-sql", help="create a Postgres role that sees only this tenant's rows (RLS)"
    )
    add_common(grant)
    grant.add_argument("name")
    revoke = actions.add_parser("revoke-sql", help="drop the tenant's Postgres role")
    add_common(revoke)
    revoke.add_argument("name")
    handlers: dict[str, Command] = dict.fromkeys(_DESIRED, cmd_desired)
    handlers["tenants"] = cmd_tenants
    return handlers


def _print(args: argparse.Namespace, row: Any, human: str) -> None:
    print(store.dumps(store.record_to_dict(row)) if args.json else human)


async def cmd_desired(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler cancel|freeze|thaw ID``."""
    conn = await connect_settings(settings)
    try:
        row = await store.set_desired_state(conn, args.id, _DESIRED[args.command])
    finally:
        await conn.close()
    _print(
        args,
        row,
        f"job {row['id']}: desired_state {row['desired_state']} (state {row['state']})",
    )
    return 0


async def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    """``scheduler tenants list|add|set|freeze|thaw``."""
    conn = await connect_settings(settings)
    try:
        if args.tenant_action == "list":
            rows = await store.list_tenants(conn)
            _print_tenants(args, rows)
            return 0
        if args.tenant_action in ("grant-sql", "revoke-sql"):
            return await _sql_access(conn, args)
        if args.tenant_action in ("freeze", "thaw"):
            row = await store.set_tenant_frozen(conn, args.name, args.tenant_action == "freeze")
        else:
            # Settings not given are absent (SUPPRESS); 'none' is present as None.
            fields = {f: getattr(args, f) for f in store.TENANT_FIELDS if hasattr(args, f)}
            if args.tenant_action == "add":
                row = await store.add_tenant(conn, args.name, **fields)
            else:
                row = await store.set_tenant(conn, args.name, **fields)
    finally:
        await conn.close()
    _print(args, row, _describe_tenant(row))
    return 0


async def _sql_access(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    """``scheduler tenants grant-sql|revoke-sql NAME``."""
    if args.tenant_action == "grant-sql":
        role, password = await grant_sql(conn, args.name)
        data = {"tenant": args.name, "role": role, "password": password}
        human = f"role {role} (password {password}) sees only tenant {args.name}'s rows"
    else:
        if not await revoke_sql(conn, args.name):
            raise SqlAccessError(f"tenant {args.name!r} has no SQL role")
        data, human = {"tenant": args.name, "revoked": True}, f"role of {args.name} dropped"
    print(store.dumps(data) if args.json else human)
    return 0


def _describe_tenant(row: Any) -> str:
    parts = [f"tenant {row['name']}"]
    if row["parent"]:
        parts.append(f"parent={row['parent']}")
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
        parts.append("FROZEN")
    return " ".join(parts)


def _print_tenants(args: argparse.Namespace, rows: list[Any]) -> None:
    if args.json:
        print(store.dumps([store.record_to_dict(r) for r in rows]))
        return
    print(
        f"{'NAME':<16} {'PARENT':<12} {'WEIGHT':>6} {'CPU':>6} {'MEMORY':>9} "
        f"{'MAXRUN':>6} {'ACTIVE':>6} {'QUEUED':>6} {'UID':>10} FROZEN"
    )
    for r in rows:
        print(
            f"{r['name']:<16} {r['parent'] or '-':<12} {r['weight']:>6} "
            f"{'-' if r['cpu_limit'] is None else str(r['cpu_limit']):>6} "
            f"{format_bytes(r['memory_limit_bytes']):>9} "
            f"{'-' if r['max_running_jobs'] is None else r['max_running_jobs']:>6} "
            f"{r['active_jobs']:>6} {r['queued_jobs']:>6} {r.get('uid') or '-':>10} "
            f"{'yes' if r['frozen'] else 'no'}"
        )
