"""Per-job isolation choices: user, network and root filesystem, from the job and the node.

The runner asks for them before starting the monitor, and hands the attempt's writable
layer back here when the attempt ended (kept or removed by the node's policy).
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from scheduler.config import Settings
from scheduler.errors import ConfigError, SandboxError
from scheduler.jobs import Job
from scheduler.runtime.images import ImageStore
from scheduler.runtime.sandbox import (
    SandboxPolicy,
    TenantIdentity,
    host_network,
    keep_rootfs,
    resolve_run_as,
    tenant_credentials,
)
from scheduler.runtime.spec import Credentials

log = structlog.get_logger(__name__)

# The attempt's writable layer, overlay work dir and mount point, inside its run directory.
ROOTFS_DIR = "rootfs"


@dataclass(frozen=True)
class Isolation:
    """What the monitor is told about one attempt's user, network and root."""

    credentials: Credentials
    host_network: bool
    layers: tuple[Path, ...]
    rootfs_dir: Path | None
    # The default seccomp filter applies (not for the node's trusted tenants).
    seccomp: bool = True


class Isolator:
    """Turns a claimed job into its :class:`Isolation` under the node's policy."""

    def __init__(self, policy: SandboxPolicy, images: ImageStore) -> None:
        self.policy = policy
        self.images = images
        self._users: dict[str, Credentials] = {}

    def check(self) -> None:
        """Fail now, not at every job, if the node's default user does not exist."""
        self._credentials(self.policy.default_run_as)

    def _credentials(self, run_as: str) -> Credentials:
        credentials = self._users.get(run_as)
        if credentials is None:
            credentials = resolve_run_as(run_as)
            self._users[run_as] = credentials
        return credentials

    def for_job(self, job: Job, run_dir: Path, identity: TenantIdentity | None = None) -> Isolation:
        """The attempt's isolation; raises a SchedulerError the job's error can carry.

        A tenant with an ``identity`` (every tenant since migration 0009) runs as its own
        uid/gid, or as the operator's checked ``run_as``; the node's run_as is the fallback
        for rows without one."""
        if identity is None:
            credentials = self._credentials(job.run_as or self.policy.default_run_as)
        else:
            credentials = self._tenant_credentials(job.tenant, identity, job.run_as)
        network = host_network(job.network, allowed=self.policy.allow_network)
        seccomp = job.tenant not in self.policy.trusted_tenants
        if job.image is None:
            return Isolation(credentials, network, (), None, seccomp)
        layers = self.images.layers(job.image)
        return Isolation(credentials, network, layers, run_dir / ROOTFS_DIR, seccomp)

    def _tenant_credentials(
        self, tenant: str, identity: TenantIdentity, run_as: str | None
    ) -> Credentials:
        key = f"{tenant}\0{identity.uid}\0{run_as}"
        credentials = self._users.get(key)
        if credentials is None:
            credentials = tenant_credentials(
                tenant, identity, run_as, agent_ids=(os.geteuid(), os.getegid())
            )
            if run_as is None:
                _check_unclaimed(tenant, credentials.uid)
            self._users[key] = credentials
        return credentials

    async def release(self, run_dir: Path, *, succeeded: bool) -> None:
        """After the attempt: remove its writable layer unless the policy keeps it."""
        if keep_rootfs(self.policy.keep_upper, succeeded):
            return
        rootfs = _rootfs_left(run_dir)
        if rootfs is None:
            return
        # The overlay went away with the job's mount namespace; this is a plain directory.
        await anyio.to_thread.run_sync(shutil.rmtree, rootfs, True)
        log.debug("rootfs_removed", path=rootfs)


def _check_unclaimed(tenant: str, uid: int) -> None:
    """Refuse a tenant uid that a host account has: its files and processes would be the
    tenant's (the range in scheduler.isolation must stay clear of /etc/passwd)."""
    try:
        account = pwd.getpwuid(uid).pw_name
    except KeyError:
        return
    raise SandboxError(
        f"tenant {tenant}: its uid {uid} belongs to the host account {account!r}; move the "
        "tenant id range (scheduler.isolation) clear of the host's accounts"
    )


def _rootfs_left(run_dir: Path) -> str | None:
    """The attempt's writable layer if it exists (a str and os.path, cheaper than pathlib:
    this runs at the end of every attempt)."""
    rootfs = f"{run_dir}/{ROOTFS_DIR}"
    return rootfs if os.path.exists(rootfs) else None  # noqa: PTH110


def isolator_for(settings: Settings) -> Isolator:
    """The node's isolator, from its settings."""
    policy = SandboxPolicy(
        default_run_as=settings.sandbox.run_as,
        allow_network=settings.sandbox.allow_network,
        keep_upper=settings.sandbox.keep_upper,
        trusted_tenants=settings.sandbox.trusted_tenant_names,
    )
    isolator = Isolator(policy, ImageStore(settings.paths.images_dir))
    try:
        isolator.check()
    except SandboxError as exc:
        raise ConfigError(f"run_as: {exc}") from exc
    return isolator
