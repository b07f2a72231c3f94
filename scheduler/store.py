"""What the CLI modules still reach as ``store.<name>``: re-exports only, no code.

The job store was split (issue 21): repositories in scheduler/repos/ (jobs, tenants), the
requests and their checks in scheduler/requests.py, the exceptions in scheduler/errors.py,
JSON shaping in scheduler/presentation.py. The CLI modules call ``store.submit(...)`` and
the like; when the CLI package imports those modules directly, delete this file.
"""

from __future__ import annotations

from scheduler.presentation import dumps, record_to_dict
from scheduler.repos.jobs import (
    get,
    list_jobs,
    set_array_desired_state,
    set_desired_state,
    submit,
    submit_array,
    wait,
)
from scheduler.repos.tenants import (
    add_tenant,
    list_tenants,
    set_tenant,
    set_tenant_frozen,
)
from scheduler.requests import INT4_MAX, TENANT_FIELDS, TENANT_NAME, ArraySpec, JobRequest

__all__ = [
    "INT4_MAX",
    "TENANT_FIELDS",
    "TENANT_NAME",
    "ArraySpec",
    "JobRequest",
    "add_tenant",
    "dumps",
    "get",
    "list_jobs",
    "list_tenants",
    "record_to_dict",
    "set_array_desired_state",
    "set_desired_state",
    "set_tenant",
    "set_tenant_frozen",
    "submit",
    "submit_array",
    "wait",
]
