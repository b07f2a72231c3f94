"""The bounds of request bodies, defined once.

The body schemas (:mod:`scheduler.api.schemas`) validate with these numbers and the OpenAPI
document is generated from those schemas, so the two cannot differ. Where the database holds
the same rule in a CHECK constraint or a column type, tests/integration/test_body_limits.py
reads the live catalogue and probes the bound, so the migrations and these numbers cannot
drift apart either. (api/limits.py is something else: the HTTP connection limits.)
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

# Postgres column types: integer (int4) and bigint (int8).
INT4_MAX: Final = 2**31 - 1
INT8_MAX: Final = 2**63 - 1

MAX_BODY_BYTES: Final = 1 << 20
# Exponents past this are refused: turning 1e999999999 into an int or a float for storage
# would take the CPU for minutes, or become an infinity Postgres refuses.
MAX_EXPONENT: Final = 1000
# JSON nested deeper than this is refused (json.loads would recurse until RecursionError).
MAX_DEPTH: Final = 64

# Jobs (migrations/0001 job_cpu_range, job_memory_positive, ...; the upper bounds the database
# leaves open are the kernel's: 4096 CPUs, 2^62 bytes, the kernel's pid_max).
CPU_MAX: Final = Decimal(4096)  # cpu and a tenant's cpu_limit: (0, CPU_MAX]
MEMORY_MIN: Final = 1 << 20
MEMORY_MAX: Final = 1 << 62
PIDS_MAX: Final = 4_194_304
TIMEOUT_MAX: Final = Decimal(10) ** 8  # timeout_seconds: (0, TIMEOUT_MAX]
PRIORITY_MIN: Final = -1000
PRIORITY_MAX: Final = 1000
ATTEMPTS_MAX: Final = 100
IO_BPS_MAX: Final = 1 << 50
OUTPUT_LIMIT_MAX: Final = 1 << 50
KILL_GRACE_MAX: Final = Decimal(3600)  # kill_grace_seconds: [0, KILL_GRACE_MAX] (0015)
NAME_MAX_LENGTH: Final = 200  # a job's free-text name
ARGV_MAX_ITEMS: Final = 4096
PATH_MAX_LENGTH: Final = 4096  # cwd
# As scheduler.depends_on_max() (migrations/0014): checked here first so that a body of
# 100,000 ids is refused before it reaches the database.
MAX_DEPENDS_ON: Final = 1000
# The bounds of migrations/0018 (job_labels_bounded): labels reach every line of a bill.
LABEL_KEYS_MAX: Final = 64
LABEL_KEY_BYTES: Final = 128
LABELS_BYTES: Final = 8192

# Tenants (migrations/0001 tenant_weight_range, tenant_max_running_jobs_nonnegative).
WEIGHT_MIN: Final = 1
WEIGHT_MAX: Final = 10_000
MAX_RUNNING_JOBS_MAX: Final = 1_000_000

# Idempotency-Key header (migrations/0003 idempotency_key_length).
IDEMPOTENCY_KEY_MAX: Final = 255
