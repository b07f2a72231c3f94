"""The one exception root of the project and its specific subclasses.

Each class's docstring is its default message; subclasses carry the data a person
needs to act and chain the underlying cause with ``raise ... from exc``.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """The scheduler failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(SchedulerError):
    """The configuration is invalid."""


class DatabaseError(SchedulerError):
    """The database could not be reached or refused a statement."""


class EmbeddedPostgresError(DatabaseError):
    """The embedded Postgres server could not be set up or started."""


class MigrationError(DatabaseError):
    """The database schema could not be migrated."""


class CgroupError(SchedulerError):
    """A cgroup operation failed."""


class ProcessesSurvive(CgroupError):
    """Processes are still in a cgroup after its kill's time (e.g. stuck in the kernel, in
    throttled writeback): the kill was sent and may still take, so it is worth retrying."""

    def __init__(self, message: str, pids: list[int]) -> None:
        super().__init__(message)
        self.pids = pids


class LaunchError(SchedulerError):
    """A job could not be launched."""


class JobNotFound(SchedulerError):
    """No such job."""


class SandboxError(LaunchError):
    """The job's sandbox could not be set up as asked (user, network)."""


class ImageError(SchedulerError):
    """An image could not be built, found or used."""


class ImageNotFound(ImageError):
    """No such image on this node."""


class TenantNotFound(SchedulerError):
    """No such tenant."""


class ControlRefused(SchedulerError):
    """The requested change of a job or tenant was refused."""


class NodeNameTaken(SchedulerError):
    """Another live agent holds this node name; two agents with one name must not both run."""


class LeaseLost(SchedulerError):
    """This agent lost its node's lease: it stopped claiming and killed its jobs."""


class SubmitRefused(SchedulerError):
    """The database refused the job."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


class IdempotencyMismatch(SchedulerError):
    """The idempotency key was used before with a different request."""


class BadBudget(ControlRefused):
    """A budget setting is invalid."""


class ScheduleRefused(SchedulerError):
    """The schedule was refused."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ScheduleExists(ScheduleRefused):
    """A schedule of that name already exists for the tenant."""


class ScheduleNotFound(SchedulerError):
    """No such schedule."""


class SqlAccessError(SchedulerError):
    """The tenant's SQL role could not be set up."""
