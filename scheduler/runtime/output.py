"""A job's stdout and stderr as its I/O: the bytes the monitor kept of them, and whether (and
why) it dropped the rest.

The monitor (monitor.c, "output policy") writes at most the attempt's output limit of the
job's bytes into ``<output_dir>/stdout`` and ``stderr``, throttled to the job's
``io_write_bps``; past the limit, or while the state disk has less than its reserve free, it
writes one marker line into each stream that had more and drops the rest. The bytes kept are
the job's own writes, billed as ``io_write_bytes`` beside what the kernel's block counters
saw: sampled while it runs (the files' sizes, capped at the limit, so a marker never counts)
and read at the end (the sizes less the marker lines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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

    def kept(self) -> int:
        """Bytes of the job's output on disk now (capped at the limit: never the markers)."""
        total = 0
        for name in STREAMS:
            fd = self._fds.get(name)
            if fd is None:
                try:
                    fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # made on the stream's first byte
                self._fds[name] = fd
            total += os.fstat(fd).st_size
        return total if self.limit is None else min(total, self.limit)

    def end(self) -> OutputEnd:
        """The attempt's output once the monitor is done with it (sizes less the markers)."""
        kept = 0
        dropped: str | None = None
        for name in STREAMS:
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
