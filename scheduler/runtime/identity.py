"""Who a job's monitor is: the pid and start time it wrote at the head of its reserved exit
record (``exit.reserve``: ``monitor_pid=N``, ``monitor_start=T``), checked against /proc.

A monitor forked by the fork server has the server's command line, so the start time (with
the pid) is what tells it from whatever process got its pid later; run directories of
earlier versions have no start time (or a ``monitor.pid`` file) and are checked by the run
directory in the monitor's command line instead.
"""

from __future__ import annotations

from pathlib import Path

from scheduler.runtime.launcher import RESERVE_FILE, read_exit_record
from scheduler.runtime.spec import ExitRecord


def monitor_pid(run_dir: Path) -> int | None:
    """The pid the attempt's monitor wrote at the head of its reserved exit record
    (``monitor_pid=N``), or in ``monitor.pid`` (run directories of earlier versions)."""
    identity = _monitor_identity(run_dir)
    return identity[0] if identity is not None else None


def _reserve_head(run_dir: Path) -> dict[bytes, bytes]:
    """The ``key=value`` lines at the head of the reserved record (zeros follow them)."""
    try:
        with (run_dir / RESERVE_FILE).open("rb") as reserve:
            # pid, start time and identity (at most 200 bytes, see monitor/exitrecord.c)
            head = reserve.read(512).split(b"\0", 1)[0]
    except OSError:
        head = b""
    return dict(line.partition(b"=")[::2] for line in head.split(b"\n") if b"=" in line)


def reserved_identity(run_dir: Path) -> str | None:
    """The attempt identity the monitor wrote into its reservation (runtime/records.py);
    None if there is none (no reservation, or one of an earlier version)."""
    value = _reserve_head(run_dir).get(b"identity")
    return value.decode("ascii", errors="replace") if value else None


def _monitor_identity(run_dir: Path) -> tuple[int, int | None] | None:
    """(pid, start time in clock ticks or None) of the attempt's monitor, as it wrote them."""
    fields = _reserve_head(run_dir)
    try:
        if b"monitor_pid" in fields:
            start = fields.get(b"monitor_start")
            return int(fields[b"monitor_pid"]), int(start) if start else None
        return int((run_dir / "monitor.pid").read_text().strip()), None
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces or parentheses); starttime is
    # field 22 of the line, the 20th after the name.
    return int(text.rpartition(")")[2].split()[19])


def live_monitor_pid(run_dir: Path) -> int | None:
    """The pid of this attempt's monitor if it is still alive (and really is that monitor)."""
    identity = _monitor_identity(run_dir)
    if identity is None:
        return None
    pid, start = identity
    if start:
        # A recycled pid has another start time.
        return pid if start_ticks(pid) == start else None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # Records of earlier versions: the run dir in the monitor's argv proves identity.
    return pid if str(run_dir).encode() in cmdline.split(b"\0") else None


def ended_or_running(run_dir: Path) -> ExitRecord | int | None:
    """What became of the attempt's monitor: its exit record if it wrote one, else its pid if
    it is still alive, else None. Raises LaunchError if the record cannot be read."""
    record = read_exit_record(run_dir)
    if record is not None:
        return record
    pid = live_monitor_pid(run_dir)
    if pid is not None:
        return pid
    # The monitor writes its record, then exits: one that did both between the two looks
    # above left its record behind (seen as "lost" with 50 jobs ending around a restart).
    return read_exit_record(run_dir)
