"""``scheduler migrate``: apply the pending database migrations."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from scheduler.cli.command import Command, Subparsers, add_common
from scheduler.cli.connect import connect
from scheduler.cli.output import out

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_migrate(sub: Subparsers) -> None:
    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    add_common(migrate)


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.db.migrate import migrate

    conn = await connect(settings)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    out(
        args,
        {"applied": applied},
        f"applied migrations {applied}" if applied else "schema is up to date",
    )
    return 0


MIGRATE = Command("migrate", add_migrate, cmd_migrate, logs=True)
