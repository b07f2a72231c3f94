"""Reconciles what users ask (jobs.desired_state, tenants.frozen and limits) with the kernel.

Every change of a job's desired_state and every tenant change NOTIFYs ``scheduler_control``
(``node:<name>`` of the node running the job, or ``tenants``: any role may LISTEN, so the
payload names no job and no tenant); the agent's LISTEN connection wakes this loop within
milliseconds, and a notice for this node has every attempt's desired state read again.
NOTIFY is not durable, so the loop also reconciles everything at start-up and every
``poll_interval``. The state column follows the kernel: it says 'frozen' only after the
freezer confirmed it, and 'running' after a thaw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import structlog

from scheduler.agent import grace
from scheduler.agent.attempts import Attempt, Attempts
from scheduler.agent.tenants import TenantCgroups, tenant_limits
from scheduler.agent.unkillable import KILL_RETRY_FIRST_SECONDS, KILL_RETRY_MAX_SECONDS, Unkillable
from scheduler.backoff import Backoff
from scheduler.cgroups.asyncdriver import async_driver
from scheduler.cgroups.base import CgroupDriver, CgroupPath, Limits
from scheduler.db.outage import DB_ERRORS, log_failure
from scheduler.errors import CgroupError, ProcessesSurvive
from scheduler.repos import control
from scheduler.repos import listen as channels
from scheduler.repos.tenant_tree import tenant_tree

log = structlog.get_logger(__name__)
# An action that could not be applied yet (the job's cgroup is still being created by its
# monitor, or a cancelled job is still dying) is retried after this long.
RETRY_SECONDS = 0.02
# Job ids notified before their attempt was registered (claimed, monitor not started yet).
UNKNOWN_IDS_MAX = 10_000
# A notice for this node this recent also has an attempt that starts now looked at again (it
# may be the one whose desired state changed between its claim and its start).
NODE_NOTICE_SECONDS = 5.0


class Controller:
    """Applies desired states to this node's attempts and tenant settings to its cgroups."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        driver: CgroupDriver,
        attempts: Attempts,
        tenants: TenantCgroups,
        *,
        node: str,
        poll_interval: float,
        unkillable: Unkillable | None = None,
        grace_ceiling: float = 3600.0,
    ) -> None:
        self._pool = pool
        # The longest grace between SIGTERM and the kill a cancelled job gets on this node.
        self._grace_ceiling = grace_ceiling
        self._unkillable = unkillable
        self._driver = driver
        self._calls = async_driver(driver)
        self._attempts = attempts
        self._tenants = tenants
        self._node = node
        self._poll_interval = poll_interval
        self._wake = anyio.Event()
        self._pending: set[int] = set()
        self._unknown: set[int] = set()
        self._tenants_dirty = True
        self._node_dirty = False
        self._node_notice_at = -NODE_NOTICE_SECONDS
        # Full: re-apply every desired state without trusting what this agent believes it
        # applied (start-up, after a database error). Sweep: look at every attempt and tenant
        # (the poll: a NOTIFY may have been lost), acting only where the flags differ.
        self._full = True
        self._sweep = False
        # What this agent last applied to each tenant cgroup on this node.
        self._tenant_frozen: dict[str, bool] = {}
        self._tenant_limits: dict[str, Limits] = {}
        attempts.on_start = self._attempt_started

    async def listen(self, conn: asyncpg.Connection) -> None:
        """Subscribe ``conn`` to the control notifications."""
        await channels.listen(conn, channels.CONTROL, self.notified)

    def resync(self) -> None:
        """Look at every attempt and tenant again (notifications may have been lost)."""
        self._sweep = True
        self._wake.set()

    def notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """NOTIFY callback: ``node:<name>``, ``tenants`` (or, from before migration 0010, a
        job id or ``tenant:<name>``)."""
        payload = str(payload)
        if payload.startswith("tenant"):
            self._tenants_dirty = True
        elif payload.startswith("node:"):
            if payload[5:] != self._node:
                return
            self._node_dirty = True
            self._node_notice_at = time.monotonic()
        else:
            try:
                job_id = int(payload)
            except ValueError:
                log.warning("control_payload_ignored", payload=payload)
                return
            if self._attempts.get(job_id) is None:
                if len(self._unknown) >= UNKNOWN_IDS_MAX:
                    self._unknown.clear()
                self._unknown.add(job_id)
            self._pending.add(job_id)
        self._wake.set()

    def _attempt_started(self, attempt: Attempt) -> None:
        # A request that arrived between the claim and the monitor's start, or a tenant that
        # is frozen: look again now that the attempt is known.
        frozen_tenant = any(self._tenant_frozen.get(t) for t in attempt.cgroup.parts[:-1])
        noticed = time.monotonic() - self._node_notice_at < NODE_NOTICE_SECONDS
        if attempt.job.id in self._unknown or frozen_tenant or noticed:
            self._unknown.discard(attempt.job.id)
            self._pending.add(attempt.job.id)
            self._wake.set()

    async def run(self) -> None:
        """The reconcile loop (a task of the agent's task group)."""
        while True:
            wake = self._wake = anyio.Event()
            full, self._full = self._full, False
            sweep, self._sweep = self._sweep, False
            tenants_dirty, self._tenants_dirty = self._tenants_dirty, False
            node_dirty, self._node_dirty = self._node_dirty, False
            pending, self._pending = self._pending, set()
            retry: set[int] = set()
            try:
                retry = await self.reconcile(
                    None if full or sweep or node_dirty else pending,
                    tenants=full or sweep or tenants_dirty,
                    full=full,
                )
            except DB_ERRORS as exc:
                log_failure(
                    log, "control_reconcile_failed", exc, retry_in_seconds=self._poll_interval
                )
                self._full = True
            self._pending |= retry
            timeout = RETRY_SECONDS if retry else self._poll_interval
            # A cancelled job waiting out its grace: wake when the first grace ends.
            kill_at = min((a.kill_at for a in self._attempts.all() if a.kill_at), default=None)
            if kill_at is not None:
                timeout = min(timeout, max(0.0, kill_at - time.monotonic()))
            with anyio.move_on_after(timeout) as scope:
                await wake.wait()
            now = time.monotonic()
            due = {a.job.id for a in self._attempts.all() if a.kill_at and a.kill_at <= now}
            self._pending |= due
            if scope.cancelled_caught and not retry and not due:
                self._sweep = True

    async def reconcile(
        self, job_ids: set[int] | None, *, tenants: bool, full: bool = False
    ) -> set[int]:
        """Apply tenant settings (if ``tenants``) and the desired state of ``job_ids`` (all
        attempts when None; with ``full``, re-applied to the kernel even where this agent
        believes it already is); return the ids to look at again shortly."""
        if tenants:
            await self._reconcile_tenants()
        attempts = self._attempts.all()
        for attempt in attempts:
            attempt.frozen_by_tenant = any(
                self._tenant_frozen.get(t) for t in attempt.cgroup.parts[:-1]
            )
        targets = attempts if job_ids is None else [a for a in attempts if a.job.id in job_ids]
        retry: set[int] = set()
        if targets:
            rows = await control.control_jobs(self._pool, [a.job.id for a in targets], self._node)
            desired = {r["id"]: r["desired_state"] for r in rows}
            for row in rows:
                known = self._attempts.get(row["id"])
                if known is not None and known.job.attempts == row["attempts"]:
                    # What the column says now (an adopted attempt may have been left
                    # 'frozen' by the previous run of the agent).
                    known.recorded_state = row["state"]
                    known.kill_grace = min(float(row["kill_grace_seconds"]), self._grace_ceiling)
            for attempt in targets:
                want = desired.get(attempt.job.id)
                if want is not None and not await self._apply(attempt, want, full=full):
                    retry.add(attempt.job.id)
        await self._record_states(attempts)
        return retry

    async def _reconcile_tenants(self) -> None:
        rows = await tenant_tree(self._pool)
        for row in rows:
            name: str = row["name"]
            path = CgroupPath(tuple(row["path"]))
            self._tenants.moved(name, path.parts)
            if not await self._calls.exists(path):
                # No job of this tenant ran on this node yet: its cgroup is made (with the
                # current limits) on first use.
                self._tenant_frozen.pop(name, None)
                self._tenant_limits.pop(name, None)
                continue
            limits = tenant_limits(row, self._tenants.io_devices, self._tenants.pids_cap)
            if self._tenant_limits.get(name) != limits and await self._call(
                self._driver.ensure, path, limits, what="tenant_limits", tenant=name
            ):
                self._tenant_limits[name] = limits
                log.info("tenant_limits_applied", tenant=name, limits=str(limits))
            # A reached budget with action freeze freezes the tenant's cgroup (its subtree
            # with it) without touching tenants.frozen: raising the budget thaws it.
            frozen: bool = row["frozen"] or bool(row.get("budget_frozen"))
            if self._tenant_frozen.get(name) == frozen:
                continue
            try:
                await (self._calls.freeze if frozen else self._calls.thaw)(path)
            except CgroupError as exc:
                ancestor_frozen = any(self._tenant_frozen.get(t) for t in path.parts[:-1])
                if frozen or not ancestor_frozen:
                    log.warning("tenant_freeze_failed", tenant=name, frozen=frozen, error=str(exc))
                    continue
                # Thawed under a frozen ancestor: its own request is cleared, which is all
                # this tenant asks; the ancestor's freeze still holds it.
            self._tenant_frozen[name] = frozen
            log.info(
                "tenant_frozen" if frozen else "tenant_thawed",
                tenant=name,
                by_budget=bool(row.get("budget_frozen")) and not row["frozen"],
            )

    async def _apply(self, attempt: Attempt, want: str, *, full: bool) -> bool:
        """Bring one attempt's cgroup to ``want``; False to try again shortly."""
        job, cgroup = attempt.job, attempt.cgroup
        log_ = log.bind(job_id=job.id, tenant=job.tenant)
        full = full or not attempt.verified
        if want == "running" and not attempt.frozen_self and not full:
            return True  # as it should be: no look at the kernel (every sweep, every attempt)
        exists = await self._calls.exists(cgroup)
        if exists:
            attempt.verified = True
        if want == "cancelled":
            if not attempt.cancelled:
                log_.info("job_cancelling")
            attempt.cancelled = True
            if exists:
                if not await self._kill_now(attempt):
                    return True  # in its grace: the loop wakes at attempt.kill_at
                await self._cancel_kill(attempt)
            # Asked again until the runner has seen the end: a job whose monitor had not yet
            # put it into its cgroup is killed on the next round.
            return False
        if want == "frozen" and (not attempt.frozen_self or full):
            if not exists:
                return False
            try:
                await self._calls.freeze(cgroup)
            except CgroupError as exc:
                # The driver thawed it again: the job keeps running and says why.
                log_.warning("job_freeze_failed", error=str(exc))
                await control.set_job_error(
                    self._pool, job.id, f"freeze failed: {exc}", job.attempts
                )
                return True
            attempt.frozen_self = True
            log_.info("job_frozen")
        elif want == "running" and (attempt.frozen_self or full):
            if exists:
                try:
                    await self._calls.thaw(cgroup)
                except CgroupError as exc:
                    # The attempt ended between the check and the write: nothing to thaw.
                    if not await self._calls.exists(cgroup):
                        return True
                    if not attempt.frozen_by_tenant:
                        log_.warning("job_thaw_failed", error=str(exc))
                        await control.set_job_error(
                            self._pool, job.id, f"thaw failed: {exc}", job.attempts
                        )
                        return True
            if attempt.frozen_self:
                log_.info("job_thawed", still_frozen_by_tenant=attempt.frozen_by_tenant)
            attempt.frozen_self = False
        return True

    async def _record_states(self, attempts: list[Attempt]) -> None:
        """Pause or resume each attempt's run clock and write the states that changed."""
        changes: list[tuple[int, str, int]] = []
        for attempt in attempts:
            if attempt.cancelled:
                continue
            if attempt.frozen:
                attempt.clock.pause()
            else:
                attempt.clock.resume()
            state = "frozen" if attempt.frozen else "running"
            if state != attempt.recorded_state:
                changes.append((attempt.job.id, state, attempt.job.attempts))
                attempt.recorded_state = state
        if changes:
            await control.set_job_states(self._pool, changes)

    async def _kill_now(self, attempt: Attempt) -> bool:
        """Whether a cancelled attempt is to be killed now. Otherwise it got its SIGTERM
        (once: agent/grace.py) and ``attempt.kill_at`` says when its grace ends."""
        # A frozen process acts on SIGTERM only once thawed: it is killed at once (the kill
        # thaws it). recorded_state: an adopted attempt may have been left frozen.
        if attempt.frozen or attempt.recorded_state == "frozen" or attempt.kill_grace <= 0:
            attempt.kill_at = None
            return True
        if attempt.term_ns is None:
            attempt.term_ns = await anyio.to_thread.run_sync(
                grace.terminate, attempt.procs, attempt.monitor_dir
            )
            log.info(
                "job_terminating",
                job_id=attempt.job.id,
                tenant=attempt.job.tenant,
                grace_seconds=attempt.kill_grace,
            )
        left = grace.remaining(attempt.term_ns, attempt.kill_grace)
        if left <= 0:
            attempt.kill_at = None
            return True
        attempt.kill_at = time.monotonic() + left
        return False

    async def _cancel_kill(self, attempt: Attempt) -> None:
        """Kill a cancelled attempt's cgroup; processes that survive it are retried with
        backoff and made visible."""
        if time.monotonic() < attempt.kill_after:
            return
        try:
            await self._calls.kill(attempt.cgroup)
        except ProcessesSurvive as exc:
            if attempt.kill_backoff is None:
                attempt.kill_backoff = Backoff(KILL_RETRY_FIRST_SECONDS, KILL_RETRY_MAX_SECONDS)
            attempt.kill_after = time.monotonic() + attempt.kill_backoff.next()
            if self._unkillable is not None:
                await self._unkillable.survived(attempt.job, exc.pids, str(exc))
        except CgroupError as exc:
            log.warning("kill_failed", error=str(exc), job_id=attempt.job.id)

    async def _call(self, action: Callable[..., None], *args: Any, what: str, **ids: Any) -> bool:
        """Run a blocking driver call off the loop; a refusal is logged, never fatal."""
        try:
            await self._calls.run(action, *args)
        except CgroupError as exc:
            log.warning(f"{what}_failed", error=str(exc), **ids)
            return False
        return True
