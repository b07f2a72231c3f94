"""Database rows as JSON-ready values: the shapes the HTTP API answers with and the CLI
prints. No I/O; the API uses :func:`record_to_dict` too, so this stays importable without
the CLI."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg


def record_to_dict(row: asyncpg.Record) -> dict[str, Any]:
    """A job row as JSON-ready values (decimals as strings keep their exactness)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            out[key] = str(value)
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


def dumps(value: Any) -> str:
    """What the CLI prints for ``--json`` and records: indented, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)
