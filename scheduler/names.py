"""The name rules, defined once: every other place (Python checks, OpenAPI patterns, error
messages, the cgroup path check) derives from these. The database's CHECKs in the migrations
carry the same rules; tests/unit/test_names.py compares them with a live catalogue."""

from __future__ import annotations

import re

# A tenant, image or cgroup segment name: safe as one path component and as a role suffix.
NAME_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_SHAPE = "[a-z0-9][a-z0-9_-]{0,62}"
NAME = re.compile(NAME_PATTERN)

# A schedule name may also hold dots (never a path component).
SCHEDULE_NAME_PATTERN = "^[a-z0-9][a-z0-9_.-]{0,62}$"
SCHEDULE_NAME_SHAPE = "[a-z0-9][a-z0-9_.-]{0,62}"
SCHEDULE_NAME = re.compile(SCHEDULE_NAME_PATTERN)
