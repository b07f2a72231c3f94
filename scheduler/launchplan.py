"""What a cgroup driver hands the C monitor: the cgroups to make before a job runs
(:class:`LaunchPlan`) and the counter files to read once it has ended (:class:`FinalRead`).

Plain values, importing nothing of the scheduler: ``cgroups`` makes them and ``runtime``
carries them to the monitor, so neither package needs the other (docs/architecture.md,
"Package map"; tests/unit/test_import_direction.py keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchPlan:
    """What the monitor does, in order, before it lets the job's first process run.

    ``mkdirs`` are created with mode 0755 (EEXIST is fine), ``writes`` are (file, value)
    pairs written in order (a failure is a start error naming the file), and the job's
    process id is written to every file of ``procs``.
    """

    mkdirs: tuple[str, ...] = ()
    writes: tuple[tuple[str, str], ...] = ()
    procs: tuple[str, ...] = ()
    # Directories to remove (deepest first) when the job's cgroup goes away.
    dirs: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class FinalRead:
    """What the monitor reads of the job's cgroup after the job ended, into the exit record.

    ``counters`` are re-read until two reads agree, ``gauges`` read once after them; each is
    (logical name, file) as the driver names its counter files (cgroups/counters.py).
    ``empty_check`` (a cgroup.events or a cgroup.procs file) must say the cgroup is empty,
    or nothing is read.
    """

    counters: tuple[tuple[str, str], ...]
    gauges: tuple[tuple[str, str], ...]
    empty_check: str
