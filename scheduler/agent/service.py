"""The composition root of ``scheduler serve``: builds every part and owns every task."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.types import ASGIApp

from scheduler.accounting.metrics import ServiceStats
from scheduler.agent.attempts import Attempts
from scheduler.agent.billed import load_billed
from scheduler.agent.controller import Controller
from scheduler.agent.descriptors import http_connection_cap, raise_nofile_limit
from scheduler.agent.dispatcher import Dispatcher
from scheduler.agent.fencing import fence_stale, kill_all
from scheduler.agent.health import Health
from scheduler.agent.heartbeat import Heartbeat
from scheduler.agent.isolation import isolator_for
from scheduler.agent.lease import NodeLease, register, release
from scheduler.agent.listener import Listener
from scheduler.agent.readiness import readiness
from scheduler.agent.recorder import Completion, Outbox, Recorder
from scheduler.agent.recovery import recover
from scheduler.agent.retention import Retention
from scheduler.agent.runner import Runner
from scheduler.agent.sampler import Sampler
from scheduler.agent.schedules import Clock, ScheduleFirer
from scheduler.agent.spool import UsageSpool
from scheduler.agent.statedisk import StateDisk
from scheduler.agent.tenants import TenantCgroups, node_pids_cap
from scheduler.agent.unkillable import Unkillable
from scheduler.api.app import build_app
from scheduler.api.dbwait import ApiPool
from scheduler.api.deps import ApiDeps
from scheduler.api.limits import HttpLimits
from scheduler.api.metrics import metrics_renderer
from scheduler.api.server import bind, bound_address
from scheduler.api.server import serve as serve_http
from scheduler.api.waiters import JobDoneHub
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.cgroups.detect import open_driver
from scheduler.cgroups.devices import io_devices
from scheduler.cgroups.v2 import REQUIRED_CONTROLLERS, V2Driver
from scheduler.config import Settings
from scheduler.db.embedded import EmbeddedPostgres
from scheduler.db.migrate import migrate
from scheduler.db.outage import DB_ERRORS, describe, log_failure
from scheduler.db.pool import connect, create_pool
from scheduler.errors import CgroupError, LaunchError, SchedulerError
from scheduler.policy.admission import Capacity, detect_capacity
from scheduler.repos import startup
from scheduler.runtime.forkserver import ForkServer
from scheduler.runtime.launcher import monitor_binary, warmer_binary
from scheduler.runtime.warmer import HELPER_NAME as WARMER_NAME
from scheduler.runtime.warmer import LockWarmer

log = structlog.get_logger(__name__)
# How long stopping waits for the database connections to close cleanly.
CLOSE_SECONDS = 5.0


@dataclass(frozen=True)
class Ready:
    """What a started agent tells whoever started it."""

    dsn: str
    psql: str | None
    driver: str
    node: str
    http: str | None = None


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[tuple[str, str | None]]:
    """The database URL to use (starting the embedded Postgres when none is configured)."""
    if settings.db.url:
        yield settings.db.url, None
        return
    embedded = EmbeddedPostgres(settings.paths.postgres_dir)
    await embedded.start()
    try:
        yield embedded.dsn, embedded.psql_command()
    finally:
        with anyio.CancelScope(shield=True):
            await embedded.stop()


def build_driver(settings: Settings) -> CgroupDriver:
    """The cgroup driver for this host, with the scheduler's root created."""
    prefer = None if settings.cgroups.driver == "auto" else settings.cgroups.driver
    driver = open_driver(settings.cgroups.root, prefer=prefer)
    driver.ensure(CgroupPath(()), Limits())
    if isinstance(driver, V2Driver):
        check_v2_controllers(driver, explicit=prefer == "v2")
    return driver


def check_v2_controllers(driver: V2Driver, *, explicit: bool) -> None:
    """Refuse to start when the root lacks a controller every job needs (the agent would say
    ready, then fail each job); say at start which features are off otherwise. With
    ``cgroup_driver = "v2"`` chosen explicitly (a hybrid host's controller-less cgroup2
    mount) the agent runs without them, said in the log."""
    missing = driver.missing_controllers()
    if not missing:
        return
    required = tuple(c for c in missing if c in REQUIRED_CONTROLLERS)
    if required and not explicit:
        raise CgroupError(driver.remedy(missing))
    log.warning(
        "cgroup_controllers_missing",
        cgroup=str(driver.root_dir),
        missing=" ".join(missing),
        effect="jobs asking for limits of these controllers fail",
        remedy=driver.remedy(missing),
    )


@dataclass(frozen=True)
class Kernel:
    """The agent's parts on this host's kernel: the monitor it launches, the cgroup driver,
    and the two optional helpers (a launch works without either, only slower)."""

    monitor: Path
    driver: CgroupDriver
    fork_server: ForkServer | None
    warmer: LockWarmer | None


@dataclass(frozen=True)
class Database:
    """The agent's connections and its hold on the node."""

    pool: asyncpg.Pool
    # The heartbeat's own connection and the API's own pool: no client, however many or
    # slow, and no burst of the agent's own work can keep the lease from being renewed.
    lease_pool: asyncpg.Pool
    api_pool: asyncpg.Pool
    lease: NodeLease
    registered_at: float
    capacity: Capacity


@dataclass(frozen=True)
class Work:
    """What claims, runs, steers, samples and records the jobs."""

    stats: ServiceStats
    health: Health
    outbox: Outbox
    completions: MemoryObjectReceiveStream[Completion]
    tenants: TenantCgroups
    spool: UsageSpool
    sampler: Sampler
    state_disk: StateDisk
    runner: Runner
    controller: Controller
    dispatcher: Dispatcher
    schedules: ScheduleFirer
    listener: Listener


@dataclass(frozen=True)
class Http:
    """The API: its listening socket, limits and app."""

    socket: socket.socket
    limits: HttpLimits
    job_done: JobDoneHub
    app: ASGIApp


class CloseBudget:
    """One bound for closing all of the agent's database connections, however many parts
    hold them: it starts when the first of them closes.

    Bounded because a connection whose query was cancelled mid-flight may never be handed
    back (anyio re-cancels every await of a cancelled task) and pool.close() waits for every
    connection; past the bound what is left is closed without a goodbye."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline: float | None = None
        self._terminated = False

    async def close(
        self, close: Callable[[], Awaitable[object]], terminate: Callable[[], object] | None
    ) -> None:
        """Run ``close`` within what is left of the bound (even when cancelled); past it,
        ``terminate``."""
        if self._deadline is None:
            self._deadline = anyio.current_time() + self._seconds
        done = False
        with anyio.CancelScope(shield=True, deadline=self._deadline):
            await close()
            done = True
        if done or terminate is None:
            return
        if not self._terminated:
            self._terminated = True
            log.warning("database_connections_terminated", after_seconds=self._seconds)
        terminate()


def _shielded(close: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """``close`` run to its end even when the agent is being cancelled."""

    async def run() -> None:
        with anyio.CancelScope(shield=True):
            await close()

    return run


@contextlib.asynccontextmanager
async def kernel_parts(settings: Settings) -> AsyncIterator[Kernel]:
    """The monitor binary, the cgroup driver (its root created), the lock warmer and the
    fork server, each stopped again on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        monitor = await anyio.to_thread.run_sync(monitor_binary, settings.paths.bin_dir)
        # mkdirs, writes: off the loop.
        driver = await anyio.to_thread.run_sync(build_driver, settings)
        warmer: LockWarmer | None = None
        if settings.agent.launch_warm_seconds > 0:
            try:
                binary = await anyio.to_thread.run_sync(warmer_binary, settings.paths.bin_dir)
                warmer = await LockWarmer.start(
                    binary,
                    driver.helper_dir(WARMER_NAME),
                    window=settings.agent.launch_warm_seconds,
                )
            except LaunchError as exc:
                # An optimisation only: launches work without it, a grace period slower each.
                log.warning("lock_warmer_unavailable", error=str(exc))
            else:
                stack.push_async_callback(_shielded(warmer.aclose))
        fork_server: ForkServer | None = None
        candidate = ForkServer(monitor)
        try:
            await anyio.to_thread.run_sync(candidate.start)
        except LaunchError as exc:
            # Launches then exec the monitor each time: slower, the same otherwise.
            log.warning("fork_server_unavailable", error=str(exc))
        else:
            fork_server = candidate
            stack.callback(candidate.close)
        yield Kernel(monitor=monitor, driver=driver, fork_server=fork_server, warmer=warmer)


@contextlib.asynccontextmanager
async def _open_pool(budget: CloseBudget, dsn: str, **options: Any) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, **options)
    try:
        yield pool
    finally:
        await budget.close(pool.close, pool.terminate)


@contextlib.asynccontextmanager
async def database_parts(
    settings: Settings, dsn: str, driver: CgroupDriver, budget: CloseBudget
) -> AsyncIterator[Database]:
    """The agent's three pools, the schema migrated, and the node registered (its lease
    released and every connection closed on the way out, within ``budget``)."""
    async with contextlib.AsyncExitStack() as stack:
        # A session left idle inside a transaction for a whole lease belongs to an agent that
        # stalled (a VM pause, SIGSTOP) and is fenced by now: Postgres ends it, and with it
        # the claim lock it may hold, which would otherwise stop every node's claims.
        pool = await stack.enter_async_context(
            _open_pool(
                budget,
                dsn,
                min_size=2,
                max_size=8,
                name=f"scheduler {settings.node.name}",
                idle_in_transaction_seconds=settings.node.lease_seconds,
                agent_writer=True,
            )
        )
        lease_pool = await stack.enter_async_context(
            _open_pool(
                budget,
                dsn,
                min_size=1,
                max_size=1,
                name=f"scheduler {settings.node.name} lease",
                idle_in_transaction_seconds=settings.node.lease_seconds,
                # expire_nodes ends the attempts of nodes found dead: outcome columns.
                agent_writer=True,
            )
        )
        api_pool = await stack.enter_async_context(
            _open_pool(
                budget,
                dsn,
                min_size=1,
                max_size=settings.db.api_connections,
                name=f"scheduler {settings.node.name} api",
                idle_in_transaction_seconds=settings.node.lease_seconds,
            )
        )
        async with pool.acquire() as conn:
            await migrate(conn)
        capacity = detect_capacity(settings.node.cpu, settings.node.memory_bytes)
        registered_at = time.monotonic()
        lease = await register(
            pool,
            settings.node.name,
            lease_seconds=settings.node.lease_seconds,
            driver=driver.name,
            capacity=capacity,
            labels=settings.node.label_set,
        )

        async def release_lease() -> None:
            with contextlib.suppress(*DB_ERRORS):
                await release(pool, lease)

        stack.push_async_callback(budget.close, release_lease, None)
        yield Database(
            pool=pool,
            lease_pool=lease_pool,
            api_pool=api_pool,
            lease=lease,
            registered_at=registered_at,
            capacity=capacity,
        )


@contextlib.asynccontextmanager
async def work_parts(
    settings: Settings,
    dsn: str,
    kernel: Kernel,
    db: Database,
    budget: CloseBudget,
    *,
    schedule_clock: Clock | None = None,
) -> AsyncIterator[Work]:
    """Everything that claims, runs, steers, samples and records jobs, constructed with what
    it uses; the usage spool replayed and the billed totals loaded first. The listener's
    connection is closed on the way out."""
    driver, pool = kernel.driver, db.pool
    async with contextlib.AsyncExitStack() as stack:
        send, receive = anyio.create_memory_object_stream[Completion](4096)
        stack.enter_context(send)
        stack.enter_context(receive)
        outbox = Outbox(send)
        tenants = TenantCgroups(
            pool,
            driver,
            io_devices(settings.cgroups.io_devices, settings.paths.state),
            pids_cap=node_pids_cap(settings.cgroups.max_pids),
        )
        stats = ServiceStats()
        health = Health(stats)
        spool = UsageSpool(
            settings.paths.spool_dir, settings.limits.spool_max_bytes, stats=stats, health=health
        )
        await anyio.to_thread.run_sync(spool.load)
        # What a previous run spooled goes first: recovery reloads marks from these rows. The
        # heartbeat does not run yet: a long replay goes on in the background (spool.run),
        # and marks are not reloaded while rows wait.
        try:
            with anyio.move_on_after(settings.node.lease_seconds / 3):
                await spool.replay(pool)
        except DB_ERRORS as exc:
            health.fail("usage", f"usage rows are spooled on disk: {describe(exc)}")
        # Before any row of this run is counted (recovery records ended attempts below).
        try:
            await load_billed(pool, driver, settings.node.name, stats.billed)
        except DB_ERRORS as exc:  # the counters start at zero: a reset, which Prometheus takes
            log_failure(log, "billed_totals_load_failed", exc)
        sampler = Sampler(
            pool,
            driver,
            node=settings.node.name,
            interval=settings.accounting.sample_interval,
            stats=stats,
            tenant_paths=tenants.paths,
            spool=spool,
            health=health,
        )
        unkillable = Unkillable(pool, stats=stats, health=health, quiet=sampler.quiet)

        def disk_usable_again() -> None:
            # The dispatcher is made below (it asks the state disk before each claim);
            # the state disk first checks once the agent runs, by then it exists.
            dispatcher.wake()

        state_disk = StateDisk(
            (settings.paths.state, settings.paths.monitors_dir),
            min_free_bytes=settings.limits.state_min_free_bytes,
            interval=min(settings.agent.poll_interval, 1.0),
            health=health,
            on_ok=disk_usable_again,
        )
        runner = Runner(
            driver=driver,
            tenants=tenants,
            monitor=kernel.monitor,
            runs_dir=settings.paths.runs_dir,
            monitors_dir=settings.paths.monitors_dir,
            fork_server=kernel.fork_server,
            node=settings.node.name,
            completions=outbox,
            isolator=isolator_for(settings),
            attempts=Attempts(),
            term_grace=settings.agent.term_grace_seconds,
            sampler=sampler,
            node_fault=state_disk.check,
            blocked=state_disk.blocked,
            unkillable=unkillable,
            # Written into every runtime record of this agent's attempts (runtime/records.py).
            database=await startup.database_identity(pool),
            epoch=db.lease.epoch,
            output_limit_bytes=settings.limits.output_limit_bytes,
            output_reserve_bytes=settings.limits.state_min_free_bytes,
        )
        controller = Controller(
            pool,
            driver,
            runner.attempts,
            tenants,
            node=settings.node.name,
            poll_interval=settings.agent.poll_interval,
            unkillable=unkillable,
            grace_ceiling=settings.agent.term_grace_seconds,
        )
        dispatcher = Dispatcher(
            pool,
            node=settings.node.name,
            max_running=settings.agent.max_running,
            poll_interval=settings.agent.poll_interval,
            run_job=runner.run,
            capacity=db.capacity,
            epoch=db.lease.epoch,
            on_wake=kernel.warmer.poke if kernel.warmer is not None else None,
            blocked=state_disk.blocked,
            refresh=state_disk.check,
            unrecorded=outbox.unrecorded,
        )
        schedules = ScheduleFirer(pool, clock=schedule_clock)
        listener = Listener(
            dsn,
            [dispatcher.listen, controller.listen, schedules.listen],
            [dispatcher.wake, controller.resync, schedules.wake],
        )
        try:
            await listener.connect()
        finally:
            # Whatever connect got as far as is closed with the rest.
            stack.push_async_callback(budget.close, listener.close, listener.terminate)
        yield Work(
            stats=stats,
            health=health,
            outbox=outbox,
            completions=receive,
            tenants=tenants,
            spool=spool,
            sampler=sampler,
            state_disk=state_disk,
            runner=runner,
            controller=controller,
            dispatcher=dispatcher,
            schedules=schedules,
            listener=listener,
        )


@contextlib.asynccontextmanager
async def http_parts(
    settings: Settings,
    dsn: str,
    *,
    kernel: Kernel,
    db: Database,
    work: Work,
    started: anyio.Event,
) -> AsyncIterator[Http]:
    """The API's listening socket (closed on the way out, served or not) and its app."""
    with contextlib.ExitStack() as stack:
        http_socket = stack.enter_context(contextlib.closing(bind(settings.http.addr)))
        limits = HttpLimits(
            max_connections=http_connection_cap(
                settings.http.max_connections, raise_nofile_limit()
            ),
            header_seconds=settings.http.header_timeout_seconds,
            body_seconds=settings.http.body_timeout_seconds,
            keepalive_seconds=settings.http.keepalive_timeout_seconds,
        )

        async def ready_reasons() -> list[str]:
            reasons = [
                *await readiness(db.api_pool, settings, kernel.driver),
                *work.health.reasons(),
            ]
            return reasons if started.is_set() else ["the agent is still starting", *reasons]

        # GET /v1/jobs/{id}?wait=N: one LISTEN connection for all waiters, who may take at
        # most a quarter of the HTTP connections.
        job_done = JobDoneHub(
            lambda: connect(dsn), max_waiters=max(1, min(256, limits.max_connections // 4))
        )
        sampler = work.sampler
        app = build_app(
            ApiDeps(
                pool=ApiPool(db.api_pool),
                admin_token=settings.http.admin_token,
                runs_dir=settings.paths.runs_dir,
                node=settings.node.name,
                readiness=ready_reasons,
                metrics=metrics_renderer(
                    lambda: sampler.snapshot, work.stats, job_limit=settings.accounting.metrics_jobs
                ),
                metrics_token=settings.http.metrics_token,
                body_seconds=settings.http.body_timeout_seconds,
                job_done=job_done,
                max_array_size=settings.limits.max_array_size,
            )
        )
        yield Http(socket=http_socket, limits=limits, job_done=job_done, app=app)


async def run_agent(
    settings: Settings,
    dsn: str,
    *,
    on_ready: Callable[[Ready], None] | None = None,
    psql: str | None = None,
    schedule_clock: Clock | None = None,
) -> None:
    """Run the agent against ``dsn`` until cancelled. Running jobs survive its end.
    ``schedule_clock`` replaces the wall clock of the schedule loop (tests).

    The composition root: each builder below is entered on one exit stack, so whatever
    start-up made is undone in reverse order when the agent stops, or when a later step
    of start-up fails."""
    structlog.contextvars.bind_contextvars(node=settings.node.name)
    for directory in (
        settings.paths.state,
        settings.paths.runs_dir,
        settings.paths.monitors_dir,
        settings.paths.bin_dir,
    ):
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    budget = CloseBudget(CLOSE_SECONDS)
    started = anyio.Event()
    async with contextlib.AsyncExitStack() as stack:
        kernel = await stack.enter_async_context(kernel_parts(settings))
        db = await stack.enter_async_context(database_parts(settings, dsn, kernel.driver, budget))
        work = await stack.enter_async_context(
            work_parts(settings, dsn, kernel, db, budget, schedule_clock=schedule_clock)
        )
        http = await stack.enter_async_context(
            http_parts(settings, dsn, kernel=kernel, db=db, work=work, started=started)
        )
        ready = Ready(
            dsn=dsn,
            psql=psql,
            driver=kernel.driver.name,
            node=settings.node.name,
            http=bound_address(http.socket),
        )
        with _first_scheduler_error():
            await _run(
                settings,
                kernel=kernel,
                db=db,
                work=work,
                http=http,
                started=started,
                ready=ready,
                on_ready=on_ready,
            )


async def _run(
    settings: Settings,
    *,
    kernel: Kernel,
    db: Database,
    work: Work,
    http: Http,
    started: anyio.Event,
    ready: Ready,
    on_ready: Callable[[Ready], None] | None,
) -> None:
    """The agent's tasks, in one task group, until cancelled; recovery of the attempts left
    from before happens here, between the recorder's start and the first claim."""
    driver, pool, runner = kernel.driver, db.pool, work.runner
    fenced: list[anyio.CancelScope] = []  # the agent's task group, once it runs

    async def fence(reason: str) -> None:
        # Nothing of this agent may claim, launch or record any more: its other tasks
        # are cancelled first (the kills below wait off the loop, and while they do no
        # attempt may be recorded as ended by this node), then every attempt is killed.
        running = runner.attempts.all()
        for scope in fenced:
            scope.cancel()
        with anyio.CancelScope(shield=True):
            killed = await kill_all(driver, running)
        log.error("node_fenced", reason=reason, killed=killed)

    heartbeat = Heartbeat(
        db.lease_pool,
        db.lease,
        lease_seconds=settings.node.lease_seconds,
        interval=settings.node.heartbeat_seconds,
        grace=settings.node.lease_grace_seconds,
        fence=fence,
        registered_at=db.registered_at,
    )
    async with anyio.create_task_group() as tg:
        fenced.append(tg.cancel_scope)
        tg.start_soon(heartbeat.run)
        tg.start_soon(work.listener.run)
        tg.start_soon(http.job_done.run)
        tg.start_soon(
            Recorder(
                pool,
                driver,
                work.stats,
                spool=work.spool,
                health=work.health,
                unrecorded=work.outbox.unrecorded,
            ).run,
            work.completions,
        )
        tg.start_soon(work.spool.run, pool, settings.agent.poll_interval)
        await work.state_disk.check()  # before the first claim
        tg.start_soon(work.state_disk.run)
        leftovers = await startup.active_on_node(pool, settings.node.name)
        # Attempts requeued or ended elsewhere while this node's lease was expired.
        await fence_stale(driver, {job.id for job in leftovers})
        resumed = await recover(
            leftovers,
            driver=driver,
            tenants=work.tenants,
            runner=runner,
            runs_dir=settings.paths.runs_dir,
            node=settings.node.name,
            task_group=tg,
            send_lost=work.outbox.send,
            on_start=work.dispatcher.adopt,
            on_done=work.dispatcher.release,
        )
        # After recovery: the controller's first, full pass sees the adopted attempts.
        tg.start_soon(work.controller.run)
        tg.start_soon(work.dispatcher.run, tg)
        tg.start_soon(serve_http, http.app, http.socket, http.limits)
        tg.start_soon(work.sampler.run)
        tg.start_soon(work.schedules.run)
        tg.start_soon(
            Retention(
                pool,
                runs_dir=settings.paths.runs_dir,
                attempts=runner.attempts,
                output_retention=settings.retention.output_seconds,
                job_retention=settings.retention.jobs_seconds,
                interval=settings.retention.interval_seconds,
            ).run
        )
        started.set()
        log.info(
            "agent_ready",
            driver=driver.name,
            cgroup_root=settings.cgroups.root,
            resumed=len(resumed),
            recovered=len(leftovers),
        )
        if on_ready is not None:
            on_ready(ready)


@contextlib.contextmanager
def _first_scheduler_error() -> Iterator[None]:
    """A task that failed with a scheduler error (a lost lease) ends the agent with it alone,
    not wrapped in the task group's exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, _rest = group.split(SchedulerError)
        if matched is None:
            raise
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group


async def serve(settings: Settings, *, on_ready: Callable[[Ready], None] | None = None) -> None:
    """``scheduler serve``: database (embedded if needed), agent, until SIGINT/SIGTERM."""
    with _first_scheduler_error():
        async with database(settings) as (dsn, psql), anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await run_agent(settings, dsn, on_ready=on_ready, psql=psql)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info(
                "agent_stopping",
                signal=signal.Signals(signum).name,
                note="running jobs keep running and are re-adopted at the next start",
            )
            scope.cancel()
            return


def _print_now(text: str) -> None:
    # Flushed: under systemd stdout is a pipe to the journal, block-buffered otherwise, and
    # the ready line would show only once kilobytes of other output followed it.
    print(text, flush=True)


def print_ready(ready: Ready, out: Callable[[str], object] = _print_now) -> None:
    """Tell a person where the agent is and how to reach its database."""
    out(f"scheduler: node {ready.node} ready (cgroup driver {ready.driver}, pid {os.getpid()})")
    if ready.http:
        out(
            f"scheduler: HTTP API on http://{ready.http}/v1 (OpenAPI at /openapi.json,"
            f" metrics at /metrics)"
        )
    if ready.psql:
        out(f"scheduler: embedded Postgres: {ready.dsn}")
        out(f"scheduler: connect with: {ready.psql}")
    out("scheduler: submit with: scheduler submit -- echo hello   (or INSERT INTO scheduler.jobs)")
    sys.stdout.flush()
