"""A job's output for the CLI: read once (``logs``) or followed until the job ends
(``logs --follow``, ``submit --wait``). The monitor writes each attempt's stdout and stderr to
``<state>/runs/<id>-<attempt>/`` on this node, making each file on the job's first byte."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from scheduler.config import Settings
from scheduler.db.pool import Conn
from scheduler.errors import SchedulerError
from scheduler.jobs import FINAL_STATES
from scheduler.repos import jobs as jobs_repo
from scheduler.rundirs import run_dir_for

# How often a followed job's files and row are looked at (a person is watching, not a test).
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class OutputFiles:
    """The output directory of one attempt."""

    directory: Path
    attempt: int

    def read(self, name: str) -> str:
        path = self.directory / name
        return path.read_text(errors="replace") if path.exists() else ""


def output_files(settings: Settings, row: Any, attempt: int | None) -> OutputFiles:
    """Where attempt ``attempt`` (None: the latest) of job ``row`` wrote its output, or an
    error that says why there is none here."""
    job = row["id"]
    if row["attempts"] == 0:
        raise SchedulerError(f"job {job} has not started yet: no output")
    chosen = row["attempts"] if attempt is None else attempt
    if not 1 <= chosen <= row["attempts"]:
        raise SchedulerError(f"job {job} has no attempt {chosen} (it has had {row['attempts']})")
    if chosen == row["attempts"] and row["node"] not in (None, settings.node.name):
        raise SchedulerError(
            f"job {job} attempt {chosen} ran on node {row['node']!r}: its output is there"
        )
    return OutputFiles(run_dir_for(settings.paths.runs_dir, job, chosen), chosen)


class _Tail:
    """New bytes of one file since the last look."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path, self.out, self.offset = path, out, 0

    def pump(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        if chunk:
            self.offset += len(chunk)
            self.out.write(chunk)
            self.out.flush()


async def follow(conn: Conn, settings: Settings, job_id: int, *, attempt: int | None) -> Any:
    """Copy the job's stdout and stderr to ours as they grow, until the job ends; return its
    final row. With ``attempt`` None a retried job's next attempt is followed too."""
    tails: tuple[_Tail, _Tail] | None = None
    following = 0
    noted_remote = False
    while True:
        row = await jobs_repo.get(conn, job_id)
        latest = row["attempts"]
        wanted = latest if attempt is None else attempt
        if wanted > following and wanted <= latest:
            if row["node"] not in (None, settings.node.name) and wanted == latest:
                if not noted_remote:
                    print(
                        f"scheduler: job {job_id} runs on node {row['node']!r}: its output is "
                        "there; waiting for its end",
                        file=sys.stderr,
                    )
                    noted_remote = True
            else:
                if tails is not None:
                    for tail in tails:
                        tail.pump()  # the rest of the previous attempt
                directory = run_dir_for(settings.paths.runs_dir, job_id, wanted)
                tails = (
                    _Tail(directory / "stdout", sys.stdout.buffer),
                    _Tail(directory / "stderr", sys.stderr.buffer),
                )
                following = wanted
        if tails is not None:
            for tail in tails:
                tail.pump()
        if row["state"] in FINAL_STATES or (attempt is not None and attempt < latest):
            return row
        await anyio.sleep(POLL_SECONDS)
