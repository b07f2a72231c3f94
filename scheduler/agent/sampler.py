"""The sampler: one batched sweep over every running attempt, off the dispatch path.

Every ``sample_interval`` seconds it reads each running attempt's counters (kept-open files,
re-read with pread, in one worker thread), appends one usage period per attempt in one
statement, and publishes a snapshot for Prometheus. Exactness rests on three rules:

- each attempt's :class:`~scheduler.accounting.periods.Mark` (last committed period end and
  cumulative counters) advances only after the sweep's rows committed;
- the runner *closes* an attempt (removes it, under the same lock a sweep holds from reading
  to commit) before it computes the closing row, so no sweep writes after or across it;
- a mark that may be stale (after a restart, a retried attempt, a failed write) is reloaded
  from the rows already in Postgres before it is used again, and only once no spooled row
  waits (the spool would otherwise hold rows the reload does not see).

Sample times are not predictable: each sweep comes a random 50-150% of ``sample_interval``
after the previous one (drawn from the OS's entropy), so a tenant cannot time its memory
around them; and each sweep resets the kernel's memory peak of every job it read, so that a
period is billed at no less than the job's highest memory in it (accounting/periods.py).

When the database is away or full, a sweep's rows go to the usage spool (agent/spool.py) and
the marks advance as if committed; while spooled rows wait, new rows go behind them. When the
spool is at its bound, the marks stay where they are: the next row that can be stored covers
all the periods in between (counters are cumulative), so nothing is dropped.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal

import anyio
import asyncpg
import structlog

from scheduler.accounting.ledger import user_share
from scheduler.accounting.metrics import (
    JobSeries,
    ServiceStats,
    Snapshot,
    monotonic,
    pressure_totals,
)
from scheduler.accounting.periods import Counters, Mark, Period, advance
from scheduler.accounting.spoolfile import UsageRow, columns
from scheduler.agent.health import Health
from scheduler.agent.spool import SpoolFull, UsageSpool
from scheduler.backoff import Backoff
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Usage
from scheduler.cgroups.counters import CounterReader, Sample, counter_files
from scheduler.db.outage import DB_ERRORS, describe, log_failure, outage_kind
from scheduler.errors import CgroupError
from scheduler.jobs import Job
from scheduler.repos import usage as usage_repo
from scheduler.runtime.output import OutputMeter
from scheduler.timeconv import NS_PER_SECOND, datetime_to_ns

log = structlog.get_logger(__name__)
# A statement that timed out (TimeoutError, one of DB_ERRORS) may still have committed: it
# is treated like any other write whose outcome is unknown (spooled, or marks reloaded).
# A sweep's statements give up after this long, so a stuck database cannot hold the lock
# (and with it every finishing attempt) for ever.
STATEMENT_TIMEOUT = 30.0
# PSI files read for each tenant's cgroup at every sweep.
PSI_RESOURCES = ("cpu", "memory", "io")
_RANDOM = secrets.SystemRandom()


def counters_of(sample: Sample | Usage) -> Counters:
    """The billed counters of a sample or a final usage read."""
    return Counters(
        cpu_ns=sample.cpu_ns,
        io_read_bytes=sample.io_read_bytes,
        io_write_bytes=sample.io_write_bytes,
        memory_peak_bytes=sample.memory_peak_bytes,
    )


# A task charges its last microseconds of cpu at its final context switch, which may come
# just after the cgroup stopped being "populated" (and on a busy host, after a preemption).
# The final read is repeated until two reads this far apart agree, within SETTLE_LIMIT.
SETTLE_SECONDS = 0.002
SETTLE_LIMIT = 0.1


async def final_usage(
    driver: CgroupDriver, cgroup: CgroupPath, reader: CounterReader | None
) -> Usage:
    """The counters of an emptied cgroup at exit, once they have stopped moving.

    Read through the sampler's kept-open files when it has them, else through the few files
    billing needs, opened once for all the reads here.
    """
    calls = async_driver(driver)  # opens and reads of cgroupfs: off the loop
    once = None
    if reader is None:
        once = await calls.run(lambda: CounterReader(counter_files(driver, cgroup, final=True)))
    source = reader if reader is not None else once
    assert source is not None
    try:
        sample = await calls.run(source.read)
        deadline = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < deadline:
            await anyio.sleep(SETTLE_SECONDS)
            again = await calls.run(source.read)
            if counters_of(again) == counters_of(sample):
                return again.usage()
            sample = again
        return sample.usage()
    finally:
        if once is not None:
            once.close()


def covering(usage: Usage, mark: Mark) -> Usage:
    """``usage`` with its billed counters raised to at least the mark's (identity whenever
    the kernel's counters are monotonic and the final read succeeded)."""
    counters = counters_of(usage)
    total = counters.at_least(mark.counters)
    if total == counters:
        return usage  # the usual case: no copy
    return replace(
        usage,
        cpu_ns=total.cpu_ns,
        io_read_bytes=total.io_read_bytes,
        io_write_bytes=total.io_write_bytes,
        memory_peak_bytes=total.memory_peak_bytes,
    )


def mark_from_row(row: asyncpg.Record, launched_ns: int | None) -> Mark:
    """A mark rebuilt from the rows already committed for an attempt (see usage_marks)."""
    rows = int(row["rows"])
    end = row["period_end"]
    if rows == 0 and launched_ns is not None:
        end_ns = launched_ns  # no row yet: the first period starts at the launch, as for any
    else:
        end_ns = datetime_to_ns(end) if end is not None else (launched_ns or time.time_ns())
    cpu: Decimal = row["cpu_seconds"]
    return Mark(
        seq=int(row["seq"]),
        rows=rows,
        end_ns=end_ns // 1000 * 1000,
        counters=Counters(
            cpu_ns=int(cpu * NS_PER_SECOND),
            io_read_bytes=int(row["io_read_bytes"]),
            io_write_bytes=int(row["io_write_bytes"]),
            memory_peak_bytes=int(row["memory_peak_bytes"]),
        ),
        # Memory at the last row's end was not stored: the next period counts its own end value.
        memory_bytes=None if rows else 0,
    )


def _uses_nothing(period: Period) -> bool:
    return not (
        period.cpu_ns or period.memory_byte_seconds or period.io_read_bytes or period.io_write_bytes
    )


@dataclass(frozen=True)
class Closed:
    """An attempt the sampler no longer meters.

    ``peak``: the highest memory the sampler read since the mark (0: none), which the
    closing period covers too when a sweep's rows were not kept.
    """

    mark: Mark
    reader: CounterReader | None
    peak: int = 0


@dataclass
class _Attempt:
    job: Job
    cgroup: CgroupPath
    launched_ns: int | None
    mark: Mark | None  # None: reload from Postgres before use
    reader: CounterReader | None = None
    last: Sample | None = None
    # The job's kept stdout/stderr, billed as io_write_bytes beside the block counters.
    output: OutputMeter | None = None
    # What of this attempt's rows the tenants' billed totals count (None: whatever its rows
    # in Postgres say, when first loaded: an adopted attempt's are in the agent's baseline).
    counted: Counters | None = field(default_factory=Counters)
    # The highest memory.peak read since the mark (the kernel's mark is reset at each read,
    # so a period whose row was not kept still bills its peak in the next one).
    peak: int = 0


class Sampler:
    """Meters running attempts into usage rows and keeps the Prometheus snapshot fresh."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        driver: CgroupDriver,
        *,
        node: str,
        interval: float,
        stats: ServiceStats | None = None,
        tenant_paths: dict[str, tuple[str, ...]] | None = None,
        spool: UsageSpool | None = None,
        health: Health | None = None,
    ) -> None:
        self._pool = pool
        self._driver = driver
        self._node = node
        self._interval = interval
        self._stats = stats or ServiceStats()
        self._tenant_paths = tenant_paths if tenant_paths is not None else {}
        self._attempts: dict[int, _Attempt] = {}
        # Attempts whose processes survive the kill: no usage row while they use nothing.
        self._quiet: set[int] = set()
        # Held by a sweep from read to commit; every attempt's end takes it once (close), so
        # a free lock is taken without a pass through the event loop.
        self._lock = anyio.Lock(fast_acquire=True)
        self._tenant_high: dict[str, Usage] = {}
        self._pressure_high: dict[str, dict[tuple[str, str], int]] = {}
        self._spool = spool
        self._health = health or Health()
        self._spool_full = False
        self.snapshot = Snapshot()

    @property
    def running(self) -> int:
        return len(self._attempts)

    def register(
        self,
        job: Job,
        cgroup: CgroupPath,
        launched_ns: int,
        output: OutputMeter | None = None,
    ) -> None:
        """Start metering an attempt just launched (first period starts at ``launched_ns``).

        A first attempt has no rows; a retried one continues the job's row numbers, which
        the claim returned (``usage_seq``), else are read from Postgres at its first sweep.
        """
        seq = 0 if job.attempts <= 1 else job.usage_seq
        mark = Mark.fresh(launched_ns, seq) if seq is not None else None
        self._attempts[job.id] = _Attempt(job, cgroup, launched_ns, mark, output=output)

    def quiet(self, job_id: int) -> None:
        """Write no zero-valued rows for ``job_id`` from now on (processes that outlive the
        kill sit in the kernel; the period is written once it uses something, or by the
        closing row). Until the attempt's metering is closed."""
        self._quiet.add(job_id)

    def adopt(self, job: Job, cgroup: CgroupPath, output: OutputMeter | None = None) -> None:
        """Resume metering an attempt a previous agent started, from its committed rows."""
        self._attempts[job.id] = _Attempt(job, cgroup, None, None, output=output, counted=None)

    async def close(self, job: Job) -> Closed:
        """Stop metering ``job``'s attempt: where its closing row must start, and its
        kept-open counter files for the final read (the caller closes them).

        Waits for a sweep in progress (it holds the lock from reading to commit), so no
        period is written for the attempt after this returns.
        """
        async with self._lock:
            attempt = self._attempts.pop(job.id, None)
            self.forget(job.id)
            if attempt is not None and attempt.output is not None:
                attempt.output.close()
            reader = attempt.reader if attempt is not None else None
            peak = attempt.peak if attempt is not None else 0
            if attempt is not None and attempt.mark is not None:
                return Closed(attempt.mark, reader, peak)
        try:
            mark = await self._mark_from_db(job, attempt)
            if attempt is not None:
                self._settle(attempt, mark)
            return Closed(mark, reader, peak)
        except BaseException:
            if reader is not None:
                reader.close()
            raise

    async def _mark_from_db(self, job: Job, attempt: _Attempt | None) -> Mark:
        launched = attempt.launched_ns if attempt is not None else None
        backoff = Backoff(0.1, 10.0)
        while True:  # the closing row cannot be computed without it: retry until it loads
            try:
                if self._spool is not None:
                    await self._spool.replay(self._pool)  # the reload must see every row
                marks = await self._load_marks([job], {job.id: launched})
                return marks[job.id]
            except DB_ERRORS as exc:
                self._stats.database_errors += 1
                delay = backoff.next()
                log_failure(log, "usage_mark_load_failed", exc, retry_in_seconds=delay)
                await anyio.sleep(delay)

    async def _load_marks(
        self, jobs: list[Job], launched: dict[int, int | None]
    ) -> dict[int, Mark]:
        rows = await usage_repo.usage_marks(
            self._pool,
            [j.id for j in jobs],
            [j.attempts for j in jobs],
            timeout_seconds=STATEMENT_TIMEOUT,
        )
        return {int(r["job_id"]): mark_from_row(r, launched.get(int(r["job_id"]))) for r in rows}

    def next_gap(self) -> float:
        """Seconds to the next sweep: a uniform 50-150% of the interval, from the OS's
        entropy (a tenant who saw every earlier sample time cannot tell the next one)."""
        return self._interval * (0.5 + _RANDOM.random())

    async def run(self) -> None:
        """Sweep about every ``interval`` seconds at unpredictable times (a slow sweep skips
        no period: the next is due from when the last was due, not from when it ended)."""
        next_at = time.monotonic()
        while True:
            next_at += self.next_gap()
            await anyio.sleep(max(0.0, next_at - time.monotonic()))
            if time.monotonic() - next_at > self._interval:
                next_at = time.monotonic()  # fell far behind (suspended host): start afresh
            try:
                await self.sweep()
            except Exception:  # one bad sweep must not stop metering; the next one retries
                log.exception("sweep_failed")

    async def sweep(self) -> int:
        """Read every running attempt, append its period, publish the snapshot; rows written."""
        started = time.perf_counter()
        async with self._lock:
            attempts = list(self._attempts.values())
            stale = [a for a in attempts if a.mark is None]
            if stale and not self._spooling:
                try:
                    marks = await self._load_marks(
                        [a.job for a in stale], {a.job.id: a.launched_ns for a in stale}
                    )
                except DB_ERRORS as exc:
                    self._stats.database_errors += 1
                    log_failure(log, "usage_mark_load_failed", exc, jobs=len(stale))
                    marks = {}
                for a in stale:
                    a.mark = marks.get(a.job.id)
                    if a.mark is not None:
                        self._settle(a, a.mark)
            at_ns, samples = await async_driver(self._driver).run(self._read_all, attempts)
            periods: list[tuple[_Attempt, Period, Mark]] = []
            for a, sample in zip(attempts, samples, strict=True):
                before = a.last.oom_kills if a.last is not None else 0
                if sample is not None and sample.oom_kills > before:
                    await self._oom_seen(a)
                a.last = sample or a.last
                if sample is None:
                    continue
                a.peak = max(a.peak, sample.memory_peak_bytes)
                if a.mark is None:
                    continue
                period, after = advance(
                    a.mark,
                    at_ns=at_ns,
                    counters=counters_of(sample),
                    memory_bytes=sample.memory_current_bytes,
                    period_peak=a.peak if a.reader is not None and a.reader.resets_peak else None,
                )
                if a.job.id in self._quiet and _uses_nothing(period):
                    continue  # the mark stays: the next row covers this time too
                periods.append((a, period, after))
            await self._store(periods)
        await self._publish(attempts)
        self._stats.sample_duration.observe(time.perf_counter() - started)
        return len(periods)

    async def _oom_seen(self, a: _Attempt) -> None:
        """The kernel OOM-killed a process of this job: lift its cpu quota, since on Linux
        6.18 the job's other processes, dying in turn, can stall for minutes while their
        cgroup is throttled (a 0.01-core job nearly always is). Its cpu stays billed."""
        log.warning("job_oom_kill_seen", job_id=a.job.id, tenant=a.job.tenant)
        try:
            await async_driver(self._driver).release_cpu(a.cgroup)
        except CgroupError:
            log.exception("job_cpu_release_failed", job_id=a.job.id)

    def _read_all(self, attempts: list[_Attempt]) -> tuple[int, list[Sample | None]]:
        """Worker thread: one sample per attempt (None when its cgroup is not there)."""
        at_ns = time.time_ns()
        samples: list[Sample | None] = []
        for a in attempts:
            try:
                if a.reader is None:
                    a.reader = CounterReader(counter_files(self._driver, a.cgroup), reset_peak=True)
                sample = a.reader.read()
                # Right after the read: the next read tells the next period's peak alone.
                a.reader.reset_peak()
                if a.output is not None:
                    kept = a.output.kept()
                    if kept:
                        sample = replace(sample, io_write_bytes=sample.io_write_bytes + kept)
                samples.append(sample)
            except OSError:
                # Not created yet by the monitor, or removed: nothing to bill this sweep.
                samples.append(None)
        return at_ns, samples

    @property
    def _spooling(self) -> bool:
        return self._spool is not None and self._spool.pending

    def _count(self, periods: list[tuple[_Attempt, Period, Mark]]) -> None:
        """Count kept rows in the tenants' billed totals (the /metrics tenant counters)."""
        ledger = self._stats.billed
        for a, p, after in periods:
            last = a.last
            share = user_share(last.cpu_user_ns, last.cpu_system_ns) if last else Decimal(1)
            ledger.add(a.job.tenant, p.cpu_seconds, p.io_read_bytes, p.io_write_bytes, share)
            a.counted = after.counters

    def _settle(self, a: _Attempt, mark: Mark) -> None:
        """A mark reloaded from Postgres: count the rows it has that the totals do not (a
        write whose outcome was unknown had committed after all)."""
        counted, a.counted = a.counted, mark.counters
        if counted is None:
            return
        cpu = mark.counters.cpu_ns - counted.cpu_ns
        read = mark.counters.io_read_bytes - counted.io_read_bytes
        write = mark.counters.io_write_bytes - counted.io_write_bytes
        if cpu > 0 or read > 0 or write > 0:
            last = a.last
            share = user_share(last.cpu_user_ns, last.cpu_system_ns) if last else Decimal(1)
            self._stats.billed.add(
                a.job.tenant,
                Decimal(max(cpu, 0)) / NS_PER_SECOND,
                max(read, 0),
                max(write, 0),
                share,
            )

    async def _store(self, periods: list[tuple[_Attempt, Period, Mark]]) -> None:
        """Commit a sweep's rows, or spool them; move the marks only past rows kept."""
        rows = [self._row(a, p) for a, p, _ in periods]
        if not rows:
            if not self._spooling:
                self._health.ok("usage")  # nothing waits to be written
            return
        if self._spooling:
            # Behind the rows already waiting: never straight to Postgres, never out of order.
            if await self._to_spool(rows):
                for a, _, after in periods:
                    a.mark, a.peak = after, 0
                self._count(periods)
            return
        try:
            await self._write([(a, p) for a, p, _ in periods])
        except DB_ERRORS as exc:
            self._stats.database_errors += 1
            if self._spool is not None and outage_kind(exc) is not None:
                self._health.fail("usage", f"usage rows are spooled on disk: {describe(exc)}")
                # Spooled rows may have committed too (a timeout): their replay is a no-op.
                if await self._to_spool(rows):
                    for a, _, after in periods:
                        a.mark, a.peak = after, 0
                    self._count(periods)
                    return
            else:
                log.exception("usage_write_failed", rows=len(rows), error=describe(exc))
            # The rows may or may not have committed: reload the marks before next use.
            for a, _, _ in periods:
                a.mark = None
        else:
            for a, _, after in periods:
                a.mark, a.peak = after, 0
            self._count(periods)
            self._health.ok("usage")

    async def _write(self, rows: list[tuple[_Attempt, Period]]) -> None:
        """Commit sweep rows straight to Postgres (one statement)."""
        if rows:
            await usage_repo.insert_usage_periods(
                self._pool,
                columns([self._row(a, p) for a, p in rows]),
                timeout_seconds=STATEMENT_TIMEOUT,
            )

    async def _to_spool(self, rows: list[UsageRow]) -> bool:
        """Spool ``rows``; False (marks must not move past them) when the spool cannot."""
        assert self._spool is not None
        try:
            await self._spool.append(rows)
        except (SpoolFull, OSError) as exc:
            if not self._spool_full:
                log.error(  # noqa: TRY400 (an expected condition, not a bug: no traceback)
                    "usage_spool_full",
                    error=str(exc),
                    note="periods are held: the next stored row covers them (no usage lost)",
                )
            self._spool_full = True
            return False
        if self._spool_full:
            log.info("usage_spool_accepting")
        self._spool_full = False
        log.warning(
            "usage_spooled", rows=len(rows), spool_rows=self._spool.rows, bytes=self._spool.bytes
        )
        return True

    def _row(self, a: _Attempt, p: Period) -> UsageRow:
        return UsageRow(
            job_id=a.job.id,
            seq=p.seq,
            attempt=a.job.attempts,
            tenant=a.job.tenant,
            node=self._node,
            start_us=p.start_ns // 1000,
            end_us=p.end_ns // 1000,
            cpu_seconds=p.cpu_seconds,
            memory_byte_seconds=p.memory_byte_seconds,
            memory_peak_bytes=p.memory_peak_bytes,
            io_read_bytes=p.io_read_bytes,
            io_write_bytes=p.io_write_bytes,
        )

    async def _publish(self, attempts: list[_Attempt]) -> None:
        """Refresh the Prometheus snapshot: tenants' cgroups, running jobs, Postgres counts."""
        paths = dict(self._tenant_paths)

        def read_tenants() -> tuple[dict[str, Usage], dict[str, dict[tuple[str, str], int]]]:
            out: dict[str, Usage] = {}
            stalls: dict[str, dict[tuple[str, str], int]] = {}
            for tenant, chain in paths.items():
                try:
                    out[tenant] = self._driver.read_usage(CgroupPath(chain))
                except Exception:  # a tenant cgroup removed meanwhile is simply not shown
                    log.debug("tenant_usage_read_failed", tenant=tenant)
                    continue
                psi = {}
                for resource in PSI_RESOURCES:
                    # No PSI for it here (v1 without a cgroup2 mirror, or PSI disabled).
                    with contextlib.suppress(CgroupError):
                        psi[resource] = self._driver.read_pressure(CgroupPath(chain), resource)
                stalls[tenant] = pressure_totals(psi)
            return out, stalls

        tenants, stalls = await async_driver(self._driver).run(read_tenants)
        for tenant, usage in tenants.items():
            self._tenant_high[tenant] = monotonic(self._tenant_high.get(tenant), usage)
        for tenant, totals in stalls.items():
            # Counters never go back while the agent runs (a tenant cgroup made again).
            high = self._pressure_high.setdefault(tenant, {})
            for key, total in totals.items():
                high[key] = max(high.get(key, 0), total)
        try:
            rows = await usage_repo.job_state_counts(self._pool, timeout_seconds=STATEMENT_TIMEOUT)
            states = {(str(r["tenant"]), str(r["state"])): int(r["n"]) for r in rows}
        except DB_ERRORS as exc:
            self._stats.database_errors += 1
            log_failure(log, "job_state_count_failed", exc)
            states = dict(self.snapshot.job_states)
        budgets = await self._budgets()
        running = {a.job.id for a in self._attempts.values()}
        self.snapshot = Snapshot(
            tenants=dict(self._tenant_high),
            jobs=tuple(
                JobSeries(a.job.id, a.job.tenant, a.last)
                for a in attempts
                if a.last is not None and a.job.id in running
            ),
            job_states=states,
            pressure={t: dict(v) for t, v in self._pressure_high.items()},
            budgets=budgets,
        )

    async def _budgets(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(tenant, currency) -> (budget, its subtree's spend this period), for
        scheduler_tenant_budget and scheduler_tenant_spend (one row per budget the operator
        set: bounded by the tenants, never by jobs)."""
        try:
            rows = await usage_repo.budget_status(
                self._pool, None, timeout_seconds=STATEMENT_TIMEOUT
            )
        except DB_ERRORS as exc:
            self._stats.database_errors += 1
            log_failure(log, "budget_status_failed", exc)
            return dict(self.snapshot.budgets)
        return {
            (str(r["tenant"]), str(r["currency"])): (float(r["budget"]), float(r["spend"]))
            for r in rows
        }

    def forget(self, job_id: int) -> None:
        """Drop a finished job's series from the snapshot at once (not at the next sweep)."""
        self._quiet.discard(job_id)
        jobs = tuple(j for j in self.snapshot.jobs if j.job_id != job_id)
        if len(jobs) != len(self.snapshot.jobs):
            self.snapshot = replace(self.snapshot, jobs=jobs)
