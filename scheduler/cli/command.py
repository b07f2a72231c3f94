"""One command of ``scheduler``, as the registry declares it: its name, the function that
adds its parser to the top parser's sub-commands, and the handler that runs it. Noun modules
import only argparse-level code at the top; what a handler needs (the database driver, the
store, the agent, accounting) it imports when it runs."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scheduler.cli.args import add_global

if TYPE_CHECKING:
    from scheduler.config import Settings

# The top parser's sub-commands (argparse._SubParsersAction, private to argparse).
Subparsers = Any
Handler = Callable[["Settings", argparse.Namespace], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """``add`` adds the command's parser to the sub-commands; ``run`` runs it with the
    settings (None: ``main`` answers it without settings or a loop, as ``completion``)."""

    name: str
    add: Callable[[Subparsers], None]
    run: Handler | None
    # Its code paths log (structlog is configured first); the others skip importing it.
    logs: bool = False
    # The agent's loop: uvloop when installed (a one-shot command does not need it).
    uvloop: bool = False


def add_common(parser: argparse.ArgumentParser) -> None:
    """The global options, accepted after the sub-command too (see args.add_global)."""
    add_global(parser, top=False)
