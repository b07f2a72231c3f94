"""The one way async code calls a cgroup driver: every call on a worker thread.

A driver call is a few cgroupfs syscalls, but some wait: a freeze until the kernel confirms
it (up to 2 s), a kill until the cgroup is empty (up to 5 s, polled), an rmdir on EBUSY, a
mkdir under cgroup_mutex while the kernel tears other cgroups down. On the event loop any of
them stalls every job's supervision, the heartbeat and the API. So async code never holds a
driver, only this facade: each call runs in ``anyio.to_thread`` under a limiter of its own
(a burst of kills takes at most ``THREADS`` worker threads, never all of anyio's), and a
kill's wait for the cgroup to empty is an ``anyio.sleep`` poll on the loop, so a slow kill
holds no thread while it waits.

One facade per driver (:func:`async_driver`), so every component shares one limiter.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.lowlevel
import anyio.to_thread

from scheduler.backoff import Backoff
from scheduler.cgroups.base import CgroupDriver, CgroupPath, LaunchPlan, Limits, Usage
from scheduler.cgroups.parse import Pressure

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Driver calls in flight at once: more would only queue in the kernel on cgroup_mutex.
THREADS = 8


class AsyncDriver:
    """``driver``'s calls for async code (see the module's docstring); ``sync`` is the driver
    itself, for its attributes and pure methods (name, emptiness_file, counter_files)."""

    def __init__(self, driver: CgroupDriver, *, threads: int = THREADS) -> None:
        self.sync = driver
        self._threads = threads
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: anyio.lowlevel.EventLoopToken | None = None

    def _current_limiter(self) -> anyio.CapacityLimiter:
        # A limiter belongs to one event loop; tests run many loops one after the other.
        loop = anyio.lowlevel.current_token()
        if self._limiter is None or self._loop != loop:
            self._limiter, self._loop = anyio.CapacityLimiter(self._threads), loop
        return self._limiter

    async def run(self, call: Callable[[*Ts], T], *args: *Ts) -> T:
        """``call(*args)`` on a worker thread under the facade's limiter: for a few driver
        calls that belong together (a sweep of reads, a batch's removals)."""
        return await anyio.to_thread.run_sync(call, *args, limiter=self._current_limiter())

    async def ensure(self, path: CgroupPath, limits: Limits) -> None:
        await self.run(self.sync.ensure, path, limits)

    async def plan(self, path: CgroupPath, limits: Limits) -> LaunchPlan:
        return await self.run(self.sync.plan, path, limits)

    async def read_usage(self, path: CgroupPath) -> Usage:
        return await self.run(self.sync.read_usage, path)

    async def read_pressure(self, path: CgroupPath, resource: str) -> Pressure:
        return await self.run(self.sync.read_pressure, path, resource)

    async def populated(self, path: CgroupPath) -> bool:
        return await self.run(self.sync.populated, path)

    async def exists(self, path: CgroupPath) -> bool:
        return await self.run(self.sync.exists, path)

    async def children(self, path: CgroupPath) -> list[str]:
        return await self.run(self.sync.children, path)

    async def freeze(self, path: CgroupPath) -> None:
        await self.run(self.sync.freeze, path)

    async def thaw(self, path: CgroupPath) -> None:
        await self.run(self.sync.thaw, path)

    async def release_cpu(self, path: CgroupPath) -> None:
        await self.run(self.sync.release_cpu, path)

    async def remove(self, path: CgroupPath) -> None:
        await self.run(self.sync.remove, path)

    async def remove_tree(self, path: CgroupPath) -> None:
        await self.run(self.sync.remove_tree, path)

    async def kill(self, path: CgroupPath) -> None:
        """As the driver's kill (ProcessesSurvive when processes outlast it), with the wait
        for the cgroup to empty on the loop: each step on a thread, the pauses between
        polls ``anyio.sleep``s, as short as the driver's own (1 ms growing to 20 ms)."""
        sent = await self.run(self.sync.start_kill, path)
        if sent is None:
            return  # no such cgroup
        emptied = False
        if sent:
            deadline = time.monotonic() + self.sync.kill_timeout
            backoff = Backoff(0.001, 0.02)
            while True:
                if not await self.run(self.sync.populated, path):
                    emptied = True
                    break
                if time.monotonic() >= deadline:
                    break
                await anyio.sleep(backoff.next())
        await self.run(self.sync.finish_kill, path, sent, emptied)


_facades: weakref.WeakKeyDictionary[CgroupDriver, AsyncDriver] = weakref.WeakKeyDictionary()


def async_driver(driver: CgroupDriver) -> AsyncDriver:
    """The one facade of ``driver`` (made on first use, shared by every caller)."""
    facade = _facades.get(driver)
    if facade is None:
        facade = _facades[driver] = AsyncDriver(driver)
    return facade
