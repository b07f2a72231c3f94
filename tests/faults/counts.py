"""Jepsen-style counts of what a fault did to jobs and to their billing rows.

A fault test submits its jobs through a :class:`Workload`: every job's command first appends
its attempt number to ``<base>/executions/<job id>`` (``base`` is the test's state directory
unless it says otherwise; the jobs' users, one per tenant, can create files there but not
list it; outside /tmp, /var/tmp and /dev/shm, since jobs get private ones), so real
executions are
counted by the kernel's own file appends, not by the agent's word. The test then injects its
fault, snapshots which attempts it hit (:meth:`Workload.hit`), and :func:`tally` waits until
every job ended (or the deadline passed) and counts.

Jobs (each job is counted once per category it falls in; recovered only when in none other):

- **lost**: not in a final state by the deadline (still queued, running or frozen);
- **duplicated**: its command ran more often than expected (one run unless the test expects
  a retry, e.g. a requeued attempt), an attempt number ran twice, or a run carries an attempt
  number the job never reached;
- **unexpected**: final, but not as expected: another state (failed instead of succeeded,
  lost though attempts were left), another ``oom_killed``, or fewer runs than expected;
- **recovered**: hit by the fault (claimed, running or exiting when it struck) and ended
  exactly as expected.

Billing rows (``scheduler.usage``), counted per attempt of each job, once per category
(1..``jobs.attempts``; an attempt still running at the deadline is left out, its job is
already lost):

- **lost**: an ended attempt with no final (closing) row;
- **duplicated**: more than one final row for an attempt, or the last attempt's rows not
  adding up to the job's totals (cpu and io summed, memory peak as the highest row);
- **unexpected**: rows for an attempt the job never reached, rows billing anything (cpu,
  memory, io) for an attempt whose command never ran (the zero closing row that ends every
  attempt is expected), negative values, a period ending before it starts, periods of one
  attempt that are not contiguous, a row after the attempt's final one, or the job's rows
  not numbered 1..n;
- **recovered**: an attempt the fault hit that was billed exactly (none of the above).

A fault that hit nothing cannot pass: :func:`assert_counts` wants recovered > 0 for jobs and
for billing, and every other count 0. Results are kept in :data:`RESULTS` for the table the
fault suite prints at the end of the run. A new fault is a few lines around the fault itself;
for a state directory on a tiny tmpfs that fills up, the executions go elsewhere:

    workload = Workload(Path(tempfile.mkdtemp(dir=SCRATCH)))   # tests.conftest; not the full tmpfs
    ids = await workload.submit(db, "sleep 1", 12)
    ...fill the tmpfs while they run...
    hit = await workload.hit(db)
    assert_counts(await tally(db, workload, fault="k: state dir full", hit=hit))
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import anyio
import asyncpg

from scheduler.jobs import FINAL_STATES as FINAL
from tests.conftest import slow


class Row(Protocol):
    """A row of scheduler.jobs or scheduler.usage (an asyncpg record, or a dict in tests)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class Expect:
    """How a job should end: its state, how many times its command runs, OOM or not."""

    state: str = "succeeded"
    runs: int = 1
    oom_killed: bool | None = None


@dataclass(frozen=True)
class Counts:
    lost: int = 0
    duplicated: int = 0
    recovered: int = 0
    unexpected: int = 0


@dataclass(frozen=True)
class FaultCounts:
    """The counts of one fault, and a line per finding (for failure messages)."""

    fault: str
    jobs: Counts
    billing: Counts
    findings: tuple[str, ...] = ()


RESULTS: list[FaultCounts] = []


class Workload:
    """The jobs of one fault test and the record of their real executions."""

    def __init__(self, base: Path) -> None:
        """Executions are recorded in ``base/executions`` (``base`` outside /tmp)."""
        self.directory = base / "executions"
        self.directory.mkdir()
        # Each tenant's jobs run as the tenant's own uid: any of them may add a file (sticky,
        # so none can remove another's), none may list them; nothing else of base is
        # readable to them.
        self.directory.chmod(0o1733)
        base.chmod(0o711)
        self.expected: dict[int, Expect] = {}

    def argv(self, script: str) -> list[str]:
        """A job that records its execution, then runs ``script``."""
        record = f'echo "$SCHEDULER_ATTEMPT" >> {self.directory}/"$SCHEDULER_JOB_ID"'
        return ["sh", "-c", f"{record}; {script}"]

    async def submit(
        self,
        db: asyncpg.Connection,
        script: str,
        count: int = 1,
        expect: Expect | None = None,
        **columns: object,
    ) -> list[int]:
        """Insert ``count`` jobs running ``script`` in one statement (one claim takes them
        all); ``columns`` are other columns of scheduler.jobs (cpu defaults to 0.01)."""
        columns = {"cpu": 0.01, "memory_bytes": 64 << 20, **columns}
        names = ["argv", *columns]
        params = ", ".join(f"${i}" for i in range(2, len(names) + 1))
        rows = await db.fetch(
            f"INSERT INTO scheduler.jobs ({', '.join(names)})"
            f" SELECT $1, {params} FROM generate_series(1, {count}) RETURNING id",
            self.argv(script),
            *columns.values(),
        )
        ids = [int(r["id"]) for r in rows]
        for job_id in ids:
            self.expected[job_id] = expect or Expect()
        return ids

    def executions(self) -> dict[int, list[int]]:
        """The attempt numbers each job's command ran under, in order."""
        runs: dict[int, list[int]] = {}
        for path in self.directory.iterdir():
            runs[int(path.name)] = [int(line) for line in path.read_text().split()]
        return runs

    async def hit(self, db: asyncpg.Connection, ids: list[int] | None = None) -> dict[int, int]:
        """The attempts the fault hits now: each claimed job (running or frozen in Postgres,
        whether its process started, runs or is exiting) with its attempt number."""
        rows = await db.fetch(
            "SELECT id, attempts FROM scheduler.jobs WHERE id = ANY($1)"
            " AND state IN ('running', 'frozen')",
            list(self.expected) if ids is None else ids,
        )
        return {int(r["id"]): int(r["attempts"]) for r in rows}

    async def wait_ended(self, db: asyncpg.Connection, timeout: float) -> None:
        """Until every job is final, or ``timeout`` passed (the rest count as lost); the
        timeout is this machine's, scaled like every deadline (``slow``: the v2 VM's
        emulation ran normal jobs past an unscaled one)."""
        with anyio.move_on_after(slow(timeout)):
            while await db.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY($1) AND state <> ALL($2)",
                list(self.expected),
                list(FINAL),
            ):
                await anyio.sleep(0.05)


async def tally(
    db: asyncpg.Connection,
    workload: Workload,
    *,
    fault: str,
    hit: dict[int, int],
    timeout: float = 30,
) -> FaultCounts:
    """Wait for the jobs to end (at most ``timeout`` s), count, and keep the result."""
    await workload.wait_ended(db, timeout)
    ids = list(workload.expected)
    jobs = {
        int(r["id"]): r
        for r in await db.fetch("SELECT * FROM scheduler.jobs WHERE id = ANY($1)", ids)
    }
    usage: dict[int, list[Row]] = {job_id: [] for job_id in ids}
    for u in await db.fetch(
        "SELECT * FROM scheduler.usage WHERE job_id = ANY($1) ORDER BY job_id, seq", ids
    ):
        usage[int(u["job_id"])].append(u)
    result = count(fault, jobs, usage, workload.executions(), workload.expected, hit)
    RESULTS.append(result)
    return result


def count(
    fault: str,
    jobs: Mapping[int, Row],
    usage: Mapping[int, Sequence[Row]],
    runs: Mapping[int, list[int]],
    expected: Mapping[int, Expect],
    hit: Mapping[int, int],
) -> FaultCounts:
    """The counts, from the jobs' rows, their usage rows (in seq order) and executions."""
    findings: list[str] = []
    job_counts = _count_jobs(jobs, expected, runs, hit, findings)
    billing_counts = _count_billing(jobs, usage, runs, hit, findings)
    return FaultCounts(fault, job_counts, billing_counts, tuple(findings))


def _count_jobs(
    jobs: Mapping[int, Row],
    expected: Mapping[int, Expect],
    runs: Mapping[int, list[int]],
    hit: Mapping[int, int],
    findings: list[str],
) -> Counts:
    lost = duplicated = recovered = unexpected = 0
    for job_id, expect in sorted(expected.items()):
        row = jobs[job_id]
        ran = runs.get(job_id, [])
        bad = False
        if row["state"] not in FINAL:
            lost += 1
            bad = True
            findings.append(f"job {job_id} lost: still {row['state']} (attempt {row['attempts']})")
        if (
            len(ran) > expect.runs
            or any(n > 1 for n in Counter(ran).values())
            or any(a > row["attempts"] for a in ran)
        ):
            duplicated += 1
            bad = True
            findings.append(f"job {job_id} duplicated: ran as attempts {ran}, expected {expect}")
        if row["state"] in FINAL and (
            row["state"] != expect.state
            or (expect.oom_killed is not None and row["oom_killed"] != expect.oom_killed)
            or len(ran) < expect.runs
        ):
            unexpected += 1
            bad = True
            findings.append(
                f"job {job_id} unexpected: {row['state']} (error {row['error']!r},"
                f" oom {row['oom_killed']}, attempts {row['attempts']}, ran {ran}),"
                f" expected {expect}"
            )
        if not bad and job_id in hit:
            recovered += 1
    return Counts(lost, duplicated, recovered, unexpected)


def _billed(u: Row) -> bool:
    return any(
        u[c] != 0 for c in ("cpu_seconds", "memory_byte_seconds", "io_read_bytes", "io_write_bytes")
    )


def _attempt_findings(job_id: int, attempt: int, rows: Sequence[Row], ran: bool) -> list[str]:
    """What is unexpected about one attempt's rows."""
    found = []
    if not ran and any(_billed(u) for u in rows):
        found.append(f"bills attempt {attempt} whose command never ran")
    for u in rows:
        values = ("cpu_seconds", "memory_byte_seconds", "memory_peak_bytes", "io_read_bytes")
        if any(u[c] < 0 for c in (*values, "io_write_bytes")):
            found.append(f"row seq {u['seq']} has a negative value")
        if u["period_end"] < u["period_start"]:
            found.append(f"row seq {u['seq']} ends before it starts")
    for before, after in itertools.pairwise(rows):
        if after["period_start"] != before["period_end"]:
            found.append(f"rows seq {before['seq']} and {after['seq']} are not contiguous")
        if before["final"]:
            found.append(f"row seq {after['seq']} comes after the final row")
    return [f"job {job_id} attempt {attempt}: {f}" for f in found]


def _totals_match(job: Row, rows: Sequence[Row]) -> bool:
    return bool(
        sum((u["cpu_seconds"] for u in rows), Decimal(0)) == job["cpu_seconds"]
        and sum(u["io_read_bytes"] for u in rows) == job["io_read_bytes"]
        and sum(u["io_write_bytes"] for u in rows) == job["io_write_bytes"]
        and max((u["memory_peak_bytes"] for u in rows), default=0) == job["memory_peak_bytes"]
    )


def _count_billing(
    jobs: Mapping[int, Row],
    usage: Mapping[int, Sequence[Row]],
    runs: Mapping[int, list[int]],
    hit: Mapping[int, int],
    findings: list[str],
) -> Counts:
    lost = duplicated = recovered = unexpected = 0
    for job_id, rows in sorted(usage.items()):
        job = jobs[job_id]
        final = job["state"] in FINAL
        if [u["seq"] for u in rows] != list(range(1, len(rows) + 1)):
            unexpected += 1
            findings.append(f"job {job_id}: rows not numbered 1..n: {[u['seq'] for u in rows]}")
        by_attempt: dict[int, list[Row]] = {}
        for u in rows:
            by_attempt.setdefault(int(u["attempt"]), []).append(u)
        for attempt in sorted(set(by_attempt) - set(range(1, job["attempts"] + 1))):
            unexpected += 1
            findings.append(f"job {job_id}: rows for attempt {attempt}, never claimed")
        ended = job["attempts"] if final else job["attempts"] - 1
        for attempt in range(1, job["attempts"] + 1):
            attempt_rows = by_attempt.get(attempt, [])
            finals = sum(1 for u in attempt_rows if u["final"])
            bad = False
            if attempt <= ended and finals == 0:
                lost += 1
                bad = True
                findings.append(f"job {job_id} attempt {attempt}: no final usage row")
            last = final and attempt == job["attempts"]
            if finals > 1 or (last and finals and not _totals_match(job, attempt_rows)):
                duplicated += 1
                bad = True
                findings.append(
                    f"job {job_id} attempt {attempt}: {finals} final rows; rows"
                    f" {[(u['seq'], u['cpu_seconds'], u['final']) for u in attempt_rows]},"
                    f" job totals cpu {job['cpu_seconds']} peak {job['memory_peak_bytes']}"
                )
            problems = _attempt_findings(
                job_id, attempt, attempt_rows, attempt in runs.get(job_id, [])
            )
            if problems:
                unexpected += 1
                bad = True
                findings.extend(problems)
            if not bad and hit.get(job_id) == attempt and attempt <= ended:
                recovered += 1
    return Counts(lost, duplicated, recovered, unexpected)


def assert_counts(result: FaultCounts) -> None:
    """Nothing lost, duplicated or unexpected; and the fault hit something that recovered."""
    for what, counts in (("jobs", result.jobs), ("billing", result.billing)):
        assert (counts.lost, counts.duplicated, counts.unexpected) == (0, 0, 0), (
            f"{result.fault}: {what} {counts}:\n" + "\n".join(result.findings)
        )
        assert counts.recovered > 0, f"{result.fault}: the fault hit no {what}: {counts}"


def table(results: list[FaultCounts]) -> list[str]:
    """The counts of every fault, as lines of a table."""
    lines = [
        f"{'fault':<44} | {'jobs: lost':>10} {'dup':>4} {'recov':>6} {'unexp':>6}"
        f" | {'billing: lost':>13} {'dup':>4} {'recov':>6} {'unexp':>6}"
    ]
    lines.append("-" * len(lines[0]))
    for r in sorted(results, key=lambda r: (r.fault.split(":")[0], r.fault)):
        j, b = r.jobs, r.billing
        lines.append(
            f"{r.fault:<44} | {j.lost:>10} {j.duplicated:>4} {j.recovered:>6} {j.unexpected:>6}"
            f" | {b.lost:>13} {b.duplicated:>4} {b.recovered:>6} {b.unexpected:>6}"
        )
    return lines
