"""Database refusals in words a person can act on.

A Postgres error names the constraint it hit and, in its DETAIL, repeats the whole failing
row; neither should reach a user. :func:`refusal` maps the constraint to a sentence that says
what is wrong and what is allowed; a refusal raised by our own triggers (RAISE EXCEPTION) is
already such a sentence and keeps its first line only (no DETAIL, no HINT: those speak SQL).
"""

from __future__ import annotations

from typing import Any

# Constraint name -> what is allowed (migrations/*.sql define them).
CONSTRAINTS: dict[str, str] = {
    "tenant_name_format": "a tenant name is 1-63 of a-z, 0-9, '_' and '-', starting with a "
    "letter or digit",
    "tenant_not_own_parent": "a tenant cannot be its own parent",
    "tenant_cpu_limit_positive": "a tenant's cpu limit must be more than 0 cores (or none)",
    "tenant_memory_limit_positive": "a tenant's memory limit must be more than 0 (or none)",
    "tenant_pids_limit_positive": "a tenant's pids limit must be at least 1 (or none)",
    "tenant_max_running_jobs_nonnegative": "a tenant's max running jobs must be 0 or more "
    "(or none)",
    "tenant_weight_range": "a tenant's weight must be in [1, 10000]",
    "tenant_run_as_format": "run_as must be a user name or uid[:gid], never root",
    "tenant_io_bps_positive": "io limits must be more than 0 bytes per second (or none)",
    "tenants_pkey": "a tenant with this name already exists",
    "tenants_parent_fkey": "the parent tenant does not exist: create it first",
    "job_tenant_exists": "the tenant does not exist: create it first (scheduler tenants add)",
    "job_cpu_range": "cpu must be in (0, 4096] cores",
    "job_memory_positive": "memory must be at least 1 MiB (1M)",
    "job_pids_max_positive": "pids must be at least 1",
    "job_timeout_positive": "the timeout must be more than 0 seconds",
    "job_priority_range": "priority must be in [-1000, 1000]",
    "job_max_attempts_range": "max attempts must be in [1, 100]",
    "job_env_object": "env must be an object of strings",
    "job_labels_object": "labels must be an object",
    "job_cwd_absolute": "the working directory must be an absolute path",
    "job_image_name_format": "an image name is 1-63 of a-z, 0-9, '_' and '-'",
    "job_io_bps_positive": "io limits must be more than 0 bytes per second",
    "api_tokens_tenant_fkey": "the tenant does not exist: create it first",
}


def refusal(exc: BaseException) -> str:
    """One line saying why the database refused a statement, without SQL or row data."""
    constraint = getattr(exc, "constraint_name", None)
    if constraint in CONSTRAINTS:
        return CONSTRAINTS[constraint]
    message: Any = getattr(exc, "message", None) or str(exc)
    first = str(message).splitlines()[0] if str(message) else type(exc).__name__
    if constraint:
        # A constraint added after this table was written: its name still says what it is.
        return f"refused by the database's rule {constraint}"
    return first
