"""The array side of ``scheduler``: ``submit --array`` and ``cancel|freeze|thaw --array``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from scheduler.cli.connect import connect
from scheduler.cli.output import dumps, record

if TYPE_CHECKING:
    from scheduler import requests
    from scheduler.config import Settings
    from scheduler.jobs import DesiredState


async def submit_array_cli(
    settings: Settings, args: argparse.Namespace, request: requests.JobRequest
) -> int:
    """``scheduler submit --array START-END[%MAX] -- CMD``: prints the array id (and, with
    --json, every member)."""
    from scheduler import requests
    from scheduler.repos import jobs as jobs_repo

    start, end, cap = args.array
    spec = requests.ArraySpec(start, end, cap)
    conn = await connect(settings)
    try:
        rows = await jobs_repo.submit_array(
            conn, request, spec, max_size=settings.limits.max_array_size
        )
    finally:
        await conn.close()
    array_id = rows[0]["array_id"]
    if args.json:
        print(dumps({"array_id": array_id, "items": [record(r) for r in rows]}))
    else:
        print(array_id)
    return 0


async def steer_array_cli(
    settings: Settings, args: argparse.Namespace, desired: DesiredState
) -> int:
    """``scheduler cancel|freeze|thaw --array ID``: every unfinished member, in one statement."""
    from scheduler.repos import jobs as jobs_repo

    conn = await connect(settings)
    try:
        rows = await jobs_repo.set_array_desired_state(
            conn, args.array, desired, now=getattr(args, "now", False)
        )
    finally:
        await conn.close()
    if args.json:
        print(dumps({"array_id": args.array, "changed": [record(r) for r in rows]}))
    else:
        print(f"array {args.array}: {len(rows)} members now desired_state {desired}")
    return 0
