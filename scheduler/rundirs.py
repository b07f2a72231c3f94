"""The name of one attempt's directory, ``<job id>-<attempt>``, defined once.

The runner makes it (under the output directory and under the monitors' directory),
recovery finds it again after a restart, the API and the CLI read output from it, and
retention recognises it among other entries. No I/O here.
"""

from __future__ import annotations

import re
from pathlib import Path

# The job id is a bigint and the attempt an int: bounded digits, so a stray entry such as
# "images-cache" or a huge number never parses as an attempt.
_NAME = re.compile(r"^([0-9]{1,19})-([0-9]{1,9})$")


def run_dir_name(job_id: int, attempt: int) -> str:
    """``<job id>-<attempt>``."""
    return f"{job_id}-{attempt}"


def run_dir_for(base: Path, job_id: int, attempt: int) -> Path:
    """One attempt's directory under ``base``: the runs directory (its output) or the
    monitors' directory (its monitor's pid and exit record)."""
    return base / run_dir_name(job_id, attempt)


def parse_run_dir_name(name: str) -> tuple[int, int] | None:
    """(job id, attempt) of an attempt directory's name; None for any other name."""
    match = _NAME.match(name)
    return (int(match[1]), int(match[2])) if match else None
