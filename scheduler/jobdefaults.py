"""What a job (and a tenant) gets when its request leaves a field out, defined once.

The database's column defaults (migrations 0001, 0002, 0015) carry the same values for
rows written by hand; tests/integration/test_facts.py compares the two in a live
catalogue, so neither can drift. The request types, the agent's row reader and the CLI's
help texts take their values from here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

TENANT: Final = "default"
NAME: Final = ""
CWD: Final = "/"
CPU: Final = Decimal(1)
MEMORY_BYTES: Final = 512 * 1024 * 1024
PIDS_MAX: Final = 1024
PRIORITY: Final = 0
MAX_ATTEMPTS: Final = 1
NETWORK: Final = False
# Seconds between SIGTERM and the kill at a cancel or the time limit (the node may cap it).
KILL_GRACE_SECONDS: Final = Decimal(10)
# A tenant's fair-share weight.
TENANT_WEIGHT: Final = 100

# scheduler.jobs' column -> its default, as the database gives it back.
JOB_COLUMNS: Final[dict[str, object]] = {
    "tenant": TENANT,
    "name": NAME,
    "cwd": CWD,
    "cpu": CPU,
    "memory_bytes": MEMORY_BYTES,
    "pids_max": PIDS_MAX,
    "priority": PRIORITY,
    "max_attempts": MAX_ATTEMPTS,
    "network": NETWORK,
    "kill_grace_seconds": KILL_GRACE_SECONDS,
}
TENANT_COLUMNS: Final[dict[str, object]] = {"weight": TENANT_WEIGHT}
