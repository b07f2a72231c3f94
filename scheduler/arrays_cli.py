"""The array side of ``scheduler``: ``submit --array`` and ``cancel|freeze|thaw --array``."""

from __future__ import annotations

import argparse

from scheduler import store
from scheduler.config import Settings
from scheduler.db.pool import connect_settings
from scheduler.jobs import DesiredState


async def submit_array_cli(
    settings: Settings, args: argparse.Namespace, request: store.JobRequest
) -> int:
    """``scheduler submit --array START-END[%MAX] -- CMD``: prints the array id (and, with
    --json, every member)."""
    start, end, cap = args.array
    spec = store.ArraySpec(start, end, cap)
    conn = await connect_settings(settings)
    try:
        rows = await store.submit_array(
            conn, request, spec, max_size=settings.limits.max_array_size
        )
    finally:
        await conn.close()
    array_id = rows[0]["array_id"]
    if args.json:
        print(store.dumps({"array_id": array_id, "items": [store.record_to_dict(r) for r in rows]}))
    else:
        print(array_id)
    return 0


async def steer_array_cli(
    settings: Settings, args: argparse.Namespace, desired: DesiredState
) -> int:
    """``scheduler cancel|freeze|thaw --array ID``: every unfinished member, in one statement."""
    conn = await connect_settings(settings)
    try:
        rows = await store.set_array_desired_state(
            conn, args.array, desired, now=getattr(args, "now", False)
        )
    finally:
        await conn.close()
    if args.json:
        print(
            store.dumps(
                {"array_id": args.array, "changed": [store.record_to_dict(r) for r in rows]}
            )
        )
    else:
        print(f"array {args.array}: {len(rows)} members now desired_state {desired}")
    return 0
