"""The job's sandbox choices: which user it runs as, whether it gets the host's network.

Pure rules plus one lookup in the host's user database (injected, so the rules are tested
without it). The monitor enforces what is decided here (see monitor/init.c: drop_privileges).
"""

from __future__ import annotations

import pwd
from collections.abc import Callable
from dataclasses import dataclass

from scheduler import sandboxrules
from scheduler.errors import SandboxError
from scheduler.runtime.spec import Credentials

# The configurable values and their rules live in scheduler/sandboxrules.py (config checks
# settings with them without importing runtime); importable from here as before.
DEFAULT_RUN_AS = sandboxrules.DEFAULT_RUN_AS
RUN_AS_FORMAT = sandboxrules.RUN_AS_FORMAT
KeepUpper = sandboxrules.KeepUpper
KEEP_UPPER_VALUES = sandboxrules.KEEP_UPPER_VALUES
check_run_as = sandboxrules.check_run_as

UserLookup = Callable[[str], tuple[int, int]]


def _passwd_lookup(name: str) -> tuple[int, int]:
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _passwd_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid  # a uid the host does not name: its own number as the group


def resolve_run_as(
    text: str,
    lookup: UserLookup = _passwd_lookup,
    gid_of: Callable[[int], int] = _passwd_gid,
) -> Credentials:
    """Turn a run_as value into the uid and gid the job gets; never uid or gid 0."""
    check_run_as(text)
    if text[0].isdigit():
        uid_text, _, gid_text = text.partition(":")
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else gid_of(uid)
    else:
        try:
            uid, gid = lookup(text)
        except KeyError as exc:
            raise SandboxError(f"run_as user {text!r} does not exist on this node") from exc
    if uid == 0 or gid == 0:
        raise SandboxError(
            f"run_as {text!r} resolves to uid {uid}, gid {gid}: jobs never run as root"
        )
    if uid >= 0xFFFFFFFF or gid >= 0xFFFFFFFF:
        raise SandboxError(f"run_as {text!r}: ids must be below 4294967295")
    return Credentials(uid=uid, gid=gid)


# Ids below this are the host's system accounts (Debian's and most distributions' SYS_UID_MAX
# is 999).
SYSTEM_ID_LIMIT = 1000
# Accounts Postgres runs as (scheduler.db.embedded makes "scheduler-pg" when "postgres" is
# missing): a job running as one of them reaches the database's socket as its superuser.
DATABASE_ACCOUNTS = ("postgres", "scheduler-pg")


@dataclass(frozen=True)
class TenantIdentity:
    """A tenant's own uid/gid (allocated by the database) and the start of their range."""

    uid: int
    gid: int
    range_first: int


def _account_ids(names: tuple[str, ...], lookup: UserLookup) -> set[int]:
    ids: set[int] = set()
    for name in names:
        try:
            ids.update(lookup(name))
        except KeyError:
            continue
    return ids


def tenant_credentials(
    tenant: str,
    identity: TenantIdentity,
    run_as: str | None,
    *,
    agent_ids: tuple[int, int],
    lookup: UserLookup = _passwd_lookup,
    gid_of: Callable[[int], int] = _passwd_gid,
) -> Credentials:
    """Who a tenant's job runs as: the tenant's own ids, or the operator's ``run_as``, which is
    refused for root, system ids (below 1000 or below the tenant range, except the tenant's
    own), and the ids of the database server and of the agent (``agent_ids``)."""
    if run_as is None:
        return Credentials(uid=identity.uid, gid=identity.gid)
    credentials = resolve_run_as(run_as, lookup, gid_of)
    own = {identity.uid, identity.gid}
    floor = max(SYSTEM_ID_LIMIT, identity.range_first)
    database = _account_ids(DATABASE_ACCOUNTS, lookup)
    for kind, value in (("uid", credentials.uid), ("gid", credentials.gid)):
        if value in own:
            continue
        if value in database:
            raise SandboxError(
                f"tenant {tenant}: run_as {run_as!r} is the database server's {kind} {value}"
            )
        if value in agent_ids:
            raise SandboxError(f"tenant {tenant}: run_as {run_as!r} is the agent's {kind} {value}")
        if value < floor:
            raise SandboxError(
                f"tenant {tenant}: run_as {run_as!r} has the system {kind} {value} "
                f"(below {floor}: system accounts and ids below the tenant range are refused)"
            )
    return credentials


def host_network(asked: bool, *, allowed: bool) -> bool:
    """Whether the job shares the host's network; refuses a request the node does not allow."""
    if asked and not allowed:
        raise SandboxError(
            "the job asks for network access (network = true) but this node does not allow "
            "it: the operator enables it with allow_network (SCHEDULER_ALLOW_NETWORK=1)"
        )
    return asked


def keep_rootfs(policy: KeepUpper, succeeded: bool) -> bool:
    """Whether an attempt's writable layer stays after it ended."""
    return policy == "always" or (policy == "on_failure" and not succeeded)


@dataclass(frozen=True)
class SandboxPolicy:
    """The node operator's sandbox settings."""

    default_run_as: str = DEFAULT_RUN_AS
    allow_network: bool = False
    keep_upper: KeepUpper = "never"
    # Tenants whose jobs run without the default seccomp filter (the operator trusts them).
    trusted_tenants: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_run_as(self.default_run_as)
        if self.keep_upper not in KEEP_UPPER_VALUES:
            raise SandboxError(
                f"keep_upper must be one of {', '.join(KEEP_UPPER_VALUES)}: got {self.keep_upper!r}"
            )
