"""A job's stdout and stderr as its I/O: the bytes the monitor kept of them, and whether (and
why) it dropped the rest.

The monitor (monitor/drain.c, "output policy") writes at most the attempt's output limit of the
job's bytes into ``<output_dir>/stdout`` and ``stderr``, throttled to the job's
``io_write_bps``; past the limit, or while the state disk has less than its reserve free, it
writes one marker line into each stream that had more and drops the rest. The bytes kept are
the job's own writes, billed as ``io_write_bytes`` beside what the kernel's block counters
saw: sampled while it runs (the files' sizes, capped at the limit, so a marker never counts)
and read at the end (the sizes less the marker lines).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from scheduler.timeconv import NS_PER_SECOND

STREAMS = ("stdout", "stderr")
MARKER = b"\n[scheduler: output dropped from here: "
# A marker line is "\n[scheduler: output dropped from here: WHY]\n" with WHY under 160 bytes.
_TAIL = 256


@dataclass(frozen=True)
class OutputEnd:
    """The output of an ended attempt: job bytes kept, and why the rest was dropped (None:
    nothing was)."""

    kept_bytes: int
    dropped: str | None


def effective_limit(node: int, tenant: int | None, job: int | None) -> int:
    """The output limit of a job: the smallest of the node's, its tenant chain's (None: not
    set) and its own (a job or tenant may lower the node's limit, never raise it)."""
    return min(v for v in (node, tenant, job) if v is not None)


class OutputMeter:
    """The kept output of one attempt, re-read cheaply at every sweep (kept-open files)."""

    def __init__(self, directory: Path, limit: int | None) -> None:
        self.directory = directory
        self.limit = limit
        self._fds: dict[str, int] = {}
        # The directory's mtime when a stream's file was last looked for: a file is made in
        # it (so its mtime moves) on the stream's first byte; until then, no failed opens.
        self._looked: int | None = None

    def kept(self) -> int:
        """Bytes of the job's output on disk now (capped at the limit: never the markers)."""
        if len(self._fds) < len(STREAMS):
            self._open_new()
        total = 0
        for fd in self._fds.values():
            total += os.fstat(fd).st_size
        return total if self.limit is None else min(total, self.limit)

    def _open_new(self) -> None:
        """Open the stream files made since the last look (cheap when none was)."""
        try:
            mtime = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return  # made with the first byte of either stream
        if mtime == self._looked and time.time_ns() - mtime > NS_PER_SECOND:
            return  # (a file made within the mtime's resolution of the last look: look again)
        self._looked = mtime
        for name in STREAMS:
            if name not in self._fds:
                try:
                    self._fds[name] = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue

    def end(self) -> OutputEnd:
        """The attempt's output once the monitor is done with it (sizes less the markers)."""
        kept = 0
        dropped: str | None = None
        try:
            present = [p.name for p in self.directory.iterdir() if p.name in STREAMS]
        except FileNotFoundError:
            return OutputEnd(0, None)  # the job wrote nothing (one failed call, not two)
        for name in present:
            try:
                with open(self.directory / name, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(max(0, size - _TAIL))
                    tail = f.read()
            except FileNotFoundError:
                continue
            at = tail.rfind(MARKER)
            if at >= 0 and tail.endswith(b"]\n"):
                size -= len(tail) - at
                dropped = tail[at + len(MARKER) : -2].decode(errors="replace")
            kept += size
        if self.limit is not None:
            kept = min(kept, self.limit)
        return OutputEnd(kept, dropped)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
