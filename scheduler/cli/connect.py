"""Settings and the database connection of a one-shot command: flags over SCHEDULER_*
variables over the --config file (and, for ``billing check``, over the agent unit's
environment file)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

    from scheduler.config import Settings

# The flags that are settings (the others are the command's own).
SETTING_FLAGS = (
    "database_url",
    "state_dir",
    "cgroup_root",
    "cgroup_driver",
    "node_name",
    "max_running",
    "poll_interval",
    "log_level",
    "log_format",
)


def settings_from(args: argparse.Namespace) -> Settings:
    from scheduler.config import load_settings

    flags = {k: getattr(args, k, None) for k in SETTING_FLAGS}
    return load_settings(flags, environ=_environment(args), config_file=args.config)


def _environment(args: argparse.Namespace) -> Mapping[str, str]:
    """The process environment, over the unit's environment file for the commands that
    compare against this node's kernel (`billing check`): run from a shell, they would
    otherwise look at another cgroup root than the agent's."""
    if not hasattr(args, "env_file"):
        return os.environ
    path = args.env_file
    from scheduler.config import UNIT_ENV_FILE, read_environment_file

    if path is None:
        if not UNIT_ENV_FILE.exists():
            return os.environ
        path = UNIT_ENV_FILE
    # An empty variable counts as unset (as load_settings reads it), so the file's value holds.
    return {**read_environment_file(path), **{k: v for k, v in os.environ.items() if v}}


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection for one command (the embedded server is started if it is the one)."""
    from scheduler.db.pool import connect_settings

    return await connect_settings(settings)
