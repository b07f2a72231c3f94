"""Whose attempt a runtime record belongs to, and what a launch does about another's.

An attempt's two directories are named ``<job id>-<attempt>`` (the monitor's, holding its
reserved and final exit record, and the output directory). Those names are not unique over
time: a state directory can outlive its database (reset, or restored from a backup), and the
new database issues the same ids again. So the monitor writes the attempt's identity into
its reservation and its exit record (``identity=`` line): the database's own identity
(migration 0011's random id and the database's oid), the node's lease epoch, the job id, the
attempt, and the job's submission time in microseconds (it tells a reissued id from the job
a restored backup still knows).

A launch never reuses a directory holding another attempt's records: they are cleared when
provably stale (no monitor alive there), otherwise the launch is refused. Recovery takes
only records of the attempt it recovers (:func:`mismatch`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import LaunchError
from scheduler.jobs import Job
from scheduler.runtime.identity import live_monitor_pid, reserved_identity
from scheduler.runtime.launcher import read_exit_record, remove_run_dir
from scheduler.timeconv import datetime_to_us


@dataclass(frozen=True)
class AttemptIdentity:
    """One attempt, as its records name it."""

    database: str
    epoch: int
    job_id: int
    attempt: int
    submitted_us: int

    @classmethod
    def of(cls, database: str, epoch: int, job: Job) -> AttemptIdentity:
        return cls(database, epoch, job.id, job.attempts, datetime_to_us(job.submitted_at))

    @property
    def token(self) -> str:
        """The text the monitor writes ([A-Za-z0-9:._-] only, see monitor/exitrecord.c)."""
        return f"{self.database}:{self.epoch}:{self.job_id}:{self.attempt}:{self.submitted_us}"

    @classmethod
    def parse(cls, token: str) -> AttemptIdentity | None:
        """The identity in ``token``, or None if it does not read as one."""
        parts = token.split(":")
        if len(parts) != 5 or not all(p.isascii() and p.isdigit() for p in parts[1:]):
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]))


def mismatch(expected: AttemptIdentity, found: str | None) -> str | None:
    """Why a record naming ``found`` is not a record of the attempt ``expected``; None if it
    is. ``expected.epoch`` is the node's epoch now (a restart moves its attempts to it), so a
    record of an earlier epoch matches and one of a later epoch (a database restored to
    before it) does not. A record without identity was written by an earlier version of the
    monitor and is taken, so that an upgrade keeps its running jobs: a launch by this version
    clears any such record from the directories it uses first (:func:`clear_leftovers`)."""
    if found is None:
        return None
    other = AttemptIdentity.parse(found)
    if other is None:
        return "its identity does not parse"
    if other.database != expected.database:
        return "it belongs to another database"
    if (other.job_id, other.attempt) != (expected.job_id, expected.attempt):
        return "it belongs to another job or attempt"
    if other.submitted_us != expected.submitted_us:
        return "it belongs to an earlier job that had the same id"
    if other.epoch > expected.epoch:
        return "it was written at a later epoch of this node than the database knows"
    return None


def clear_leftovers(run_dir: Path, output_dir: Path, expected: AttemptIdentity) -> str | None:
    """Before a launch: remove what another attempt left in the attempt's two directories.

    Returns the identity of the records removed (``"unknown"`` when they carried none), or
    None when neither directory existed. Raises LaunchError (nothing removed) when a monitor
    is still alive there, or when the records are this very attempt's (it was launched
    before: launching it again would overwrite its exit).
    """
    if not (run_dir.exists() or output_dir.exists()):
        return None
    try:
        record = read_exit_record(run_dir)
    except LaunchError:
        record = None  # unreadable: no use to anyone, and not this launch's
    owner = record.identity if record is not None else reserved_identity(run_dir)
    pid = live_monitor_pid(run_dir)
    if pid is not None:
        raise LaunchError(
            f"{run_dir} holds the running monitor (pid {pid}) of attempt "
            f"{owner or 'unknown (an earlier version)'}: not launching over it"
        )
    if owner == expected.token:
        raise LaunchError(f"{run_dir} already holds the records of this attempt ({owner})")
    remove_run_dir(run_dir)
    with contextlib.suppress(FileNotFoundError):
        remove_run_dir(output_dir)
    return owner or "unknown"
