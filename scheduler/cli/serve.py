"""``scheduler serve``: run the node agent (the embedded Postgres when no URL is given)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from scheduler.cli.args import bounded_int
from scheduler.cli.command import Command, Subparsers, add_common

if TYPE_CHECKING:
    from scheduler.config import Settings


def add_serve(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="run the node agent (embedded Postgres if no URL)")
    add_common(serve)
    serve.add_argument("--cgroup-root", help="cgroup directory name under each hierarchy")
    serve.add_argument(
        "--cgroup-driver", choices=["auto", "v1", "v2"], help="cgroup version to use (auto)"
    )
    serve.add_argument("--node-name", help="this node's name (default: host name)")
    serve.add_argument(
        "--max-running", type=bounded_int(1, 100_000), help="attempts run at once on this node"
    )
    serve.add_argument("--poll-interval", type=float, help="safety poll period in seconds")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log threshold"
    )
    serve.add_argument("--log-format", choices=["console", "json"], help="log line format")


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    # The agent, the web stack and uvloop: only this command loads them.
    from scheduler import failpoints
    from scheduler.agent.service import print_ready, serve
    from scheduler.cli.admin_token import with_admin_token

    if os.geteuid() != 0:
        print(
            "scheduler: warning: not root; creating cgroups and namespaces will likely fail",
            file=sys.stderr,
        )
    failpoints.configure()
    settings, note = with_admin_token(settings)

    def ready(r: Any) -> None:
        print_ready(r)
        if note:
            print(note, flush=True)

    await serve(settings, on_ready=ready)
    return 0


SERVE = Command("serve", add_serve, cmd_serve, logs=True, uvloop=True)
