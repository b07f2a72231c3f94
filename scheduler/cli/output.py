"""The human side of the ``scheduler`` command: control characters escaped (a job name is
input from a tenant who may be hostile, and a terminal obeys escape sequences), tables that
fit the terminal, and the exit code that tells how a waited-for job ended."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from scheduler import escaping

# The CLI's output helpers include the one escape rule (shared with the status page).
escape = escaping.escape

# Exit codes of a job that never ran its command, as shells and container runtimes use them:
# 125 the scheduler could not start it, 126 the command is not executable, 127 not found.
EXIT_START_FAILED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
# A job that ended without an exit status of its own (cancelled while queued, lost).
EXIT_NO_STATUS = 1


def cell(value: Any) -> str:
    """A table cell: '-' for nothing, everything else escaped."""
    return "-" if value is None else escape(str(value))


def terminal_width() -> int:
    """Columns of the terminal (COLUMNS wins; 100 when not a terminal, e.g. a pipe)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return max(20, int(os.environ["COLUMNS"]))
    return max(20, shutil.get_terminal_size((100, 24)).columns)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[str] = (),
    width: int | None = None,
) -> str:
    """Rows as aligned columns no wider than the terminal: the widest columns give up room
    first, and a cut cell ends in '~' so a reader sees it was cut. The last column is not
    padded. Cells must be escaped already (see :func:`cell`)."""
    width = terminal_width() if width is None else width
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    gaps = 2 * (len(headers) - 1)
    while sum(widths) + gaps > width:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        floor = max(len(headers[widest]), 4)
        if widths[widest] <= floor:
            break
        widths[widest] -= 1

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[: widths[i] - 1] + "~"
        if i == len(headers) - 1:
            return text
        return text.rjust(widths[i]) if headers[i] in right else text.ljust(widths[i])

    lines = ["  ".join(fit(h, i) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(fit(c, i) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def job_exit_code(row: Any) -> int:
    """The exit code of ``scheduler submit --wait`` for a finished job: the job's own exit
    code, 128+N for a signal (as shells do), and 125/126/127 for a job that never ran its
    command (start failure / not executable / not found), so a script can tell them apart."""
    if row["exit_code"] is not None:
        return int(row["exit_code"])
    if row["signal"] is not None:
        return 128 + int(row["signal"])
    error = row["error"] or ""
    if row["state"] == "failed" and error:
        if error.startswith("exec:"):
            if "No such file or directory" in error:
                return EXIT_NOT_FOUND
            if "Permission denied" in error or "Exec format error" in error:
                return EXIT_NOT_EXECUTABLE
        return EXIT_START_FAILED
    return EXIT_NO_STATUS


def out(args: Any, data: Any, human: str, human_to: Any = None) -> None:
    """``data`` as JSON with --json, else the line ``human`` (on ``human_to``, default
    stdout)."""
    from scheduler import presentation

    if args.json:
        print(presentation.dumps(data))
    else:
        print(human, file=human_to or sys.stdout)


def dumps(data: Any) -> str:
    """``data`` as the JSON every command prints (rows' Decimal and datetime included)."""
    from scheduler import presentation

    return presentation.dumps(data)


def record(row: Any) -> dict[str, Any]:
    """A database row as a plain dict for JSON."""
    from scheduler import presentation

    return presentation.record_to_dict(row)
