"""``scheduler tokens create|revoke``: the API's bearer tokens for tenants."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from scheduler.cli.args import bounded_int
from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import escape, out
from scheduler.errors import SchedulerError

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_tokens(sub: Subparsers) -> None:
    tokens = sub.add_parser("tokens", help="API bearer tokens for tenants")
    token_sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", help="print a new token for a tenant")
    add_common(create)
    create.add_argument("--tenant", required=True, help="the tenant the token speaks for")
    create.add_argument("--description", default="", help="a note on what the token is for")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id")
    add_common(revoke)
    revoke.add_argument("id", type=bounded_int(1, 2**63 - 1), help="the token's id")


async def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from scheduler.api.auth import create_token, revoke_token

    conn = await connect(settings)
    try:
        if args.action == "create":
            try:
                token_id, token = await create_token(conn, args.tenant, args.description)
            except asyncpg.ForeignKeyViolationError as exc:
                raise SchedulerError(f"unknown tenant {escape(args.tenant)!r}") from exc
            out(args, {"id": token_id, "tenant": args.tenant, "token": token}, token)
            return 0
        if not await revoke_token(conn, args.id):
            raise SchedulerError(f"no live token with id {args.id}")
        out(args, {"id": args.id, "revoked": True}, f"token {args.id} revoked")
        return 0
    finally:
        await conn.close()


TOKENS = Command("tokens", add_tokens, cmd_tokens, logs=True)
