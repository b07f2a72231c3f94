"""The usage spool: sampled usage rows the database could not take, kept in the state
directory until it can.

Layout: ``<state>/spool/<n>.usage`` (n increasing, zero-padded), one segment per spooled
sweep. A segment is written to ``.<n>.tmp``, fsynced, renamed and the directory fsynced, so a
crash leaves either a whole segment or a stray temporary file (removed at load), never a torn
row. Segments are replayed oldest first, each in one statement that skips rows already there
(``ON CONFLICT (job_id, seq)``) and rows of attempts that already have their closing row; a
segment is deleted only after its rows committed, so a crash in between replays it again,
harmlessly. While segments are waiting, the sampler appends new rows behind them instead of
writing to Postgres, so every row reaches the database by exactly one path, in order.

A segment Postgres refuses on its merits (not for an outage) is moved to ``spool/rejected/``
with an error in the log rather than blocking every later row.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import structlog

from scheduler.accounting.metrics import ServiceStats
from scheduler.accounting.spoolfile import SpoolFormatError, UsageRow, columns, decode, encode
from scheduler.agent.health import Health
from scheduler.backoff import Backoff
from scheduler.db.outage import DB_ERRORS, describe, outage_kind
from scheduler.errors import SchedulerError
from scheduler.repos import usage as usage_repo

log = structlog.get_logger(__name__)
SUFFIX = ".usage"
# A replayed segment's statement gives up after this long (the outcome is then unknown, and
# the segment is replayed again later: harmless).
REPLAY_TIMEOUT = 10.0
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class SpoolFull(SchedulerError):
    """The usage spool reached spool_max_bytes."""


@dataclass(frozen=True)
class _Segment:
    number: int
    path: Path
    size: int
    rows: int


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_segment(directory: Path, number: int, data: bytes) -> Path:
    """Worker thread: write, fsync, rename, fsync the directory; nothing left on failure."""
    final = directory / f"{number:016d}{SUFFIX}"
    tmp = directory / f".{number:016d}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(final)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


class UsageSpool:
    """Spooled usage rows, bounded by ``max_bytes`` on disk."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        stats: ServiceStats | None = None,
        health: Health | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._stats = stats or ServiceStats()
        self._health = health or Health()
        self._segments: list[_Segment] = []
        self._next = 1
        self._lock = anyio.Lock()
        self._appended = anyio.Event()

    @property
    def pending(self) -> bool:
        """Rows are waiting: new rows must go behind them."""
        return bool(self._segments)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self._segments)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def load(self) -> None:
        """Find what a previous run left (blocking: call at start-up, before any append)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for tmp in self.directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)  # a write that never completed: never a row
        segments = []
        highest = 0  # rejected segments too: a later one never takes a rejected one's name
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                number = int(path.name.removesuffix(SUFFIX))
                highest = max(highest, number)
                rows = decode(path.read_bytes())
            except (ValueError, SpoolFormatError) as exc:
                self._reject(path, str(exc))
                continue
            segments.append(_Segment(number, path, path.stat().st_size, len(rows)))
        self._segments = sorted(segments, key=lambda s: s.number)
        self._next = highest + 1
        self._publish()
        if self._segments:
            log.warning(
                "usage_spool_found",
                segments=len(self._segments),
                rows=self.rows,
                bytes=self.bytes,
            )

    async def append(self, rows: list[UsageRow]) -> None:
        """Keep ``rows`` on disk, durably. SpoolFull at the bound; OSError from the disk
        (ENOSPC, EDQUOT...), with nothing written."""
        data = encode(rows)
        async with self._lock:
            if self.bytes + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"the usage spool holds {self.bytes} bytes; {len(data)} more would pass"
                    f" spool_max_bytes ({self.max_bytes})"
                )
            number = self._next
            try:
                path = await anyio.to_thread.run_sync(_write_segment, self.directory, number, data)
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    self._health.fail(
                        "state_disk", f"state directory full: cannot spool usage rows: {exc}"
                    )
                raise
            self._next += 1
            self._segments.append(_Segment(number, path, len(data), len(rows)))
            self._stats.spooled_rows += len(rows)
            self._publish()
        self._appended.set()

    async def replay(self, pool: asyncpg.Pool) -> int:
        """Write every waiting segment, oldest first; the rows written. Raises the database's
        error when it is away or full (what is left stays for the next try)."""
        written = 0
        async with self._lock:
            while self._segments:
                segment = self._segments[0]
                try:
                    data = await anyio.to_thread.run_sync(segment.path.read_bytes)
                    rows = decode(data)
                except FileNotFoundError:
                    pass  # removed after its commit by a replay cancelled just then
                except (OSError, SpoolFormatError) as exc:
                    self._reject(segment.path, str(exc))
                else:
                    try:
                        await usage_repo.insert_usage_periods(
                            pool, columns(rows), timeout_seconds=REPLAY_TIMEOUT
                        )
                    except DB_ERRORS as exc:
                        if outage_kind(exc) is not None:
                            raise
                        self._reject(segment.path, describe(exc))
                    else:
                        await anyio.to_thread.run_sync(self._remove, segment.path)
                        written += len(rows)
                self._segments.pop(0)
                self._publish()
        if written:
            log.info("usage_spool_replayed", rows=written, left=self.rows)
        return written

    async def run(self, pool: asyncpg.Pool, interval: float) -> None:
        """Replay whenever rows wait: every ``interval`` seconds, backing off to 10x that
        while the database stays away."""
        delay = interval
        backoff = Backoff(interval * 2, interval * 10)
        while True:
            if not self._segments:
                self._appended = anyio.Event()
                await self._appended.wait()
                delay = interval
                backoff.reset()
            await anyio.sleep(delay)
            try:
                await self.replay(pool)
            except DB_ERRORS as exc:
                self._stats.database_errors += 1
                self._health.fail("usage", f"usage rows are spooled on disk: {describe(exc)}")
                log.warning("usage_spool_replay_failed", error=describe(exc), rows=self.rows)
                delay = backoff.next()
            else:
                delay = interval
                backoff.reset()

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def _reject(self, path: Path, reason: str) -> None:
        rejected = self.directory / "rejected"
        try:
            rejected.mkdir(mode=0o700, exist_ok=True)
            path.rename(rejected / path.name)
        except OSError:
            log.exception("usage_spool_reject_failed", segment=str(path))
        log.error("usage_spool_rejected", segment=path.name, reason=reason, kept_in=str(rejected))

    def _publish(self) -> None:
        self._stats.spool_rows = self.rows
        self._stats.spool_bytes = self.bytes
