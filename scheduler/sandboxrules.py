"""The sandbox's configurable values and their rules, below both config and runtime (no
I/O): config validates the operator's settings with them, runtime/sandbox.py applies them."""

from __future__ import annotations

import re
from typing import Literal, get_args

from scheduler.errors import SandboxError

DEFAULT_RUN_AS = "nobody"
# Same rule as the tenants.run_as CHECK in migrations/0002_runtime.sql.
RUN_AS_FORMAT = re.compile(r"^([a-z_][a-z0-9_-]{0,31}|[1-9][0-9]{0,9}(:[1-9][0-9]{0,9})?)$")
# When an attempt's writable image layer is kept.
KeepUpper = Literal["never", "always", "on_failure"]
KEEP_UPPER_VALUES: tuple[KeepUpper, ...] = get_args(KeepUpper)


def check_run_as(text: str) -> str:
    """Validate a run_as value (a user name or uid[:gid], never root); return it."""
    if not RUN_AS_FORMAT.match(text) or text == "root":
        raise SandboxError(
            f"run_as {text!r} must be a user name or uid[:gid] other than root "
            "(names match [a-z_][a-z0-9_-]{0,31}, ids are positive)"
        )
    return text
