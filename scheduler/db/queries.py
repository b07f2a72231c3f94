"""Named SQL statements from queries.sql, loaded once at import."""

from __future__ import annotations

import re
from importlib import resources

_BLOCK = re.compile(r"^-- name: (\w+)\n", re.MULTILINE)


def _load() -> dict[str, str]:
    text = resources.files("scheduler.db").joinpath("queries.sql").read_text()
    parts = _BLOCK.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES = _load()


def q(name: str) -> str:
    """The statement called ``name``; KeyError names it if it does not exist."""
    return QUERIES[name]
