"""The composition root of ``scheduler serve``: builds every part and owns every task."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import anyio
import asyncpg
import structlog

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
from scheduler.db.queries import q
from scheduler.errors import CgroupError, LaunchError, SchedulerError
from scheduler.jobs import Job
from scheduler.policy.admission import detect_capacity
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
    if settings.database_url:
        yield settings.database_url, None
        return
    embedded = EmbeddedPostgres(settings.postgres_dir)
    await embedded.start()
    try:
        yield embedded.dsn, embedded.psql_command()
    finally:
        with anyio.CancelScope(shield=True):
            await embedded.stop()


def build_driver(settings: Settings) -> CgroupDriver:
    """The cgroup driver for this host, with the scheduler's root created."""
    prefer = None if settings.cgroup_driver == "auto" else settings.cgroup_driver
    driver = open_driver(settings.cgroup_root, prefer=prefer)  # type: ignore[arg-type]
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


async def run_agent(
    settings: Settings,
    dsn: str,
    *,
    on_ready: Callable[[Ready], None] | None = None,
    psql: str | None = None,
    schedule_clock: Clock | None = None,
) -> None:
    """Run the agent against ``dsn`` until cancelled. Running jobs survive its end.
    ``schedule_clock`` replaces the wall clock of the schedule loop (tests)."""
    structlog.contextvars.bind_contextvars(node=settings.node_name)
    for directory in (
        settings.state_dir,
        settings.runs_dir,
        settings.monitors_dir,
        settings.bin_dir,
    ):
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    monitor = await anyio.to_thread.run_sync(monitor_binary, settings.bin_dir)
    driver = await anyio.to_thread.run_sync(build_driver, settings)  # mkdirs, writes: off the loop
    warmer: LockWarmer | None = None
    if settings.launch_warm_seconds > 0:
        try:
            binary = await anyio.to_thread.run_sync(warmer_binary, settings.bin_dir)
            warmer = await LockWarmer.start(
                binary, driver.helper_dir(WARMER_NAME), window=settings.launch_warm_seconds
            )
        except LaunchError as exc:
            # An optimisation only: launches work without it, a grace period slower each.
            log.warning("lock_warmer_unavailable", error=str(exc))
    listener: Listener | None = None
    lease: NodeLease | None = None
    fork_server: ForkServer | None = None
    try:
        # A session left idle inside a transaction for a whole lease belongs to an agent that
        # stalled (a VM pause, SIGSTOP) and is fenced by now: Postgres ends it, and with it
        # the claim lock it may hold, which would otherwise stop every node's claims.
        pool = await create_pool(
            dsn,
            min_size=2,
            max_size=8,
            name=f"scheduler {settings.node_name}",
            idle_in_transaction_seconds=settings.lease_seconds,
            agent_writer=True,
        )
    except BaseException:
        if warmer is not None:
            with anyio.CancelScope(shield=True):
                await warmer.aclose()
        raise
    # The heartbeat's own connection and the API's own pool: no client, however many or slow,
    # and no burst of the agent's own work can keep the lease from being renewed.
    lease_pool: asyncpg.Pool | None = None
    api_pool: asyncpg.Pool | None = None
    try:
        lease_pool = await create_pool(
            dsn,
            min_size=1,
            max_size=1,
            name=f"scheduler {settings.node_name} lease",
            idle_in_transaction_seconds=settings.lease_seconds,
            # expire_nodes ends the attempts of nodes found dead: outcome columns.
            agent_writer=True,
        )
        api_pool = await create_pool(
            dsn,
            min_size=1,
            max_size=settings.api_db_connections,
            name=f"scheduler {settings.node_name} api",
            idle_in_transaction_seconds=settings.lease_seconds,
        )
        async with pool.acquire() as conn:
            await migrate(conn)
        capacity = detect_capacity(settings.node_cpu, settings.node_memory_bytes)
        registered_at = time.monotonic()
        lease = await register(
            pool,
            settings.node_name,
            lease_seconds=settings.lease_seconds,
            driver=driver.name,
            capacity=capacity,
            labels=settings.node_label_set,
        )
        send, receive = anyio.create_memory_object_stream[Completion](4096)
        outbox = Outbox(send)
        tenants = TenantCgroups(
            pool,
            driver,
            io_devices(settings.io_devices, settings.state_dir),
            pids_cap=node_pids_cap(settings.max_pids),
        )
        stats = ServiceStats()
        health = Health(stats)
        spool = UsageSpool(settings.spool_dir, settings.spool_max_bytes, stats=stats, health=health)
        await anyio.to_thread.run_sync(spool.load)
        # What a previous run spooled goes first: recovery reloads marks from these rows. The
        # heartbeat does not run yet: a long replay goes on in the background (spool.run),
        # and marks are not reloaded while rows wait.
        try:
            with anyio.move_on_after(settings.lease_seconds / 3):
                await spool.replay(pool)
        except DB_ERRORS as exc:
            health.fail("usage", f"usage rows are spooled on disk: {describe(exc)}")
        # Before any row of this run is counted (recovery records ended attempts below).
        try:
            await load_billed(pool, driver, settings.node_name, stats.billed)
        except DB_ERRORS as exc:  # the counters start at zero: a reset, which Prometheus takes
            log_failure(log, "billed_totals_load_failed", exc)
        sampler = Sampler(
            pool,
            driver,
            node=settings.node_name,
            interval=settings.sample_interval,
            stats=stats,
            tenant_paths=tenants.paths,
            spool=spool,
            health=health,
        )
        fork_server = ForkServer(monitor)
        try:
            await anyio.to_thread.run_sync(fork_server.start)
        except LaunchError as exc:
            # Launches then exec the monitor each time: slower, the same otherwise.
            log.warning("fork_server_unavailable", error=str(exc))
            fork_server = None
        unkillable = Unkillable(pool, stats=stats, health=health, quiet=sampler.quiet)
        # Written into every runtime record of this agent's attempts (runtime/records.py).
        database = str(await pool.fetchval(q("database_identity")))
        runner = Runner(
            driver=driver,
            tenants=tenants,
            monitor=monitor,
            runs_dir=settings.runs_dir,
            monitors_dir=settings.monitors_dir,
            fork_server=fork_server,
            node=settings.node_name,
            completions=outbox,
            isolator=isolator_for(settings),
            attempts=Attempts(),
            term_grace=settings.term_grace_seconds,
            sampler=sampler,
            unkillable=unkillable,
            database=database,
            epoch=lease.epoch,
            output_limit_bytes=settings.output_limit_bytes,
            output_reserve_bytes=settings.state_min_free_bytes,
        )
        controller = Controller(
            pool,
            driver,
            runner.attempts,
            tenants,
            node=settings.node_name,
            poll_interval=settings.poll_interval,
            unkillable=unkillable,
            grace_ceiling=settings.term_grace_seconds,
        )
        dispatcher = Dispatcher(
            pool,
            node=settings.node_name,
            max_running=settings.max_running,
            poll_interval=settings.poll_interval,
            run_job=runner.run,
            capacity=capacity,
            epoch=lease.epoch,
            on_wake=warmer.poke if warmer is not None else None,
            unrecorded=outbox.unrecorded,
        )
        state_disk = StateDisk(
            (settings.state_dir, settings.monitors_dir),
            min_free_bytes=settings.state_min_free_bytes,
            interval=min(settings.poll_interval, 1.0),
            health=health,
            on_ok=dispatcher.wake,
        )
        dispatcher.blocked = state_disk.blocked
        dispatcher.refresh = state_disk.check
        runner.blocked = state_disk.blocked
        runner.node_fault = state_disk.check

        work: list[anyio.CancelScope] = []  # the agent's task group, once it runs

        async def fence(reason: str) -> None:
            # Nothing of this agent may claim, launch or record any more: its other tasks
            # are cancelled first (the kills below wait off the loop, and while they do no
            # attempt may be recorded as ended by this node), then every attempt is killed.
            running = runner.attempts.all()
            for scope in work:
                scope.cancel()
            with anyio.CancelScope(shield=True):
                killed = await kill_all(driver, running)
            log.error("node_fenced", reason=reason, killed=killed)

        heartbeat = Heartbeat(
            lease_pool,
            lease,
            lease_seconds=settings.lease_seconds,
            interval=settings.heartbeat_seconds,
            grace=settings.lease_grace_seconds,
            fence=fence,
            registered_at=registered_at,
        )
        schedules = ScheduleFirer(pool, clock=schedule_clock)
        listener = Listener(
            dsn,
            [dispatcher.listen, controller.listen, schedules.listen],
            [dispatcher.wake, controller.resync, schedules.wake],
        )
        await listener.connect()
        http_socket = bind(settings.http_addr)
        http_limits = HttpLimits(
            max_connections=http_connection_cap(
                settings.http_max_connections, raise_nofile_limit()
            ),
            header_seconds=settings.http_header_timeout_seconds,
            body_seconds=settings.http_body_timeout_seconds,
            keepalive_seconds=settings.http_keepalive_timeout_seconds,
        )
        started = False

        async def ready_reasons() -> list[str]:
            reasons = [*await readiness(api_pool, settings, driver), *health.reasons()]
            return reasons if started else ["the agent is still starting", *reasons]

        # GET /v1/jobs/{id}?wait=N: one LISTEN connection for all waiters, who may take at
        # most a quarter of the HTTP connections.
        job_done = JobDoneHub(
            lambda: connect(dsn), max_waiters=max(1, min(256, http_limits.max_connections // 4))
        )
        api = build_app(
            ApiDeps(
                pool=ApiPool(api_pool),
                admin_token=settings.admin_token,
                runs_dir=settings.runs_dir,
                node=settings.node_name,
                readiness=ready_reasons,
                metrics=metrics_renderer(
                    lambda: sampler.snapshot, stats, job_limit=settings.metrics_jobs
                ),
                metrics_token=settings.metrics_token,
                body_seconds=settings.http_body_timeout_seconds,
                job_done=job_done,
                max_array_size=settings.max_array_size,
            )
        )
        with send, receive, _first_scheduler_error():
            async with anyio.create_task_group() as tg:
                work.append(tg.cancel_scope)
                tg.start_soon(heartbeat.run)
                tg.start_soon(listener.run)
                tg.start_soon(job_done.run)
                tg.start_soon(
                    Recorder(
                        pool,
                        driver,
                        stats,
                        spool=spool,
                        health=health,
                        unrecorded=outbox.unrecorded,
                    ).run,
                    receive,
                )
                tg.start_soon(spool.run, pool, settings.poll_interval)
                await state_disk.check()  # before the first claim
                tg.start_soon(state_disk.run)
                leftovers = [
                    Job.from_row(r)
                    for r in await pool.fetch(q("active_on_node"), settings.node_name)
                ]
                # Attempts requeued or ended elsewhere while this node's lease was expired.
                await fence_stale(driver, {job.id for job in leftovers})
                resumed = await recover(
                    leftovers,
                    driver=driver,
                    tenants=tenants,
                    runner=runner,
                    runs_dir=settings.runs_dir,
                    node=settings.node_name,
                    task_group=tg,
                    send_lost=outbox.send,
                    on_start=dispatcher.adopt,
                    on_done=dispatcher.release,
                )
                # After recovery: the controller's first, full pass sees the adopted attempts.
                tg.start_soon(controller.run)
                tg.start_soon(dispatcher.run, tg)
                tg.start_soon(serve_http, api, http_socket, http_limits)
                tg.start_soon(sampler.run)
                tg.start_soon(schedules.run)
                tg.start_soon(
                    Retention(
                        pool,
                        runs_dir=settings.runs_dir,
                        attempts=runner.attempts,
                        output_retention=settings.output_retention_seconds,
                        job_retention=settings.job_retention_seconds,
                        interval=settings.retention_interval_seconds,
                    ).run
                )
                started = True
                log.info(
                    "agent_ready",
                    driver=driver.name,
                    cgroup_root=settings.cgroup_root,
                    resumed=len(resumed),
                    recovered=len(leftovers),
                )
                if on_ready is not None:
                    on_ready(
                        Ready(
                            dsn=dsn,
                            psql=psql,
                            driver=driver.name,
                            node=settings.node_name,
                            http=bound_address(http_socket),
                        )
                    )
    finally:
        with anyio.CancelScope(shield=True):
            # Bounded: a connection whose query was cancelled mid-flight may never be handed
            # back (anyio re-cancels every await of a cancelled task), and pool.close() waits
            # for every connection; past the bound they are closed without a goodbye.
            closed = False
            with anyio.move_on_after(CLOSE_SECONDS):
                if lease is not None:
                    with contextlib.suppress(*DB_ERRORS):
                        await release(pool, lease)
                if listener is not None:
                    await listener.close()
                for extra in (api_pool, lease_pool):
                    if extra is not None:
                        await extra.close()
                await pool.close()
                closed = True
            if not closed:
                log.warning("database_connections_terminated", after_seconds=CLOSE_SECONDS)
                if listener is not None:
                    listener.terminate()
                for extra in (api_pool, lease_pool):
                    if extra is not None:
                        extra.terminate()
                pool.terminate()
            if warmer is not None:
                await warmer.aclose()
            if fork_server is not None:
                fork_server.close()


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
