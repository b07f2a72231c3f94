"""The argument side of the ``scheduler`` command: a parser whose errors are one line and exit
2, help that shows every default, global options accepted before or after the sub-command,
and the converters of flag values (bounded integers, labels, run-at instants)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from scheduler.labels import LabelError, parse_pair
from scheduler.units import UnitError, parse_duration

EXIT_USAGE = 2
# Postgres integer and bigint: a value outside these cannot even reach the database.
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, False, [], "")
            or default is argparse.SUPPRESS
            or action.option_strings == []
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (what is wrong, where to read
    what is allowed) and exit 2, like every Unix tool's usage error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


class UsageError(Exception):
    """A flag value that passed parsing but makes no sense (exit 2, one line)."""


def one_line(text: str) -> str:
    """``text`` on a single line, control characters escaped (a message is not a terminal
    program)."""
    from scheduler.cli.output import escape

    return escape(" ".join(str(text).split("\n")))


def add_global(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes. On the top parser they carry the defaults; on a
    sub-command they default to SUPPRESS, so ``scheduler --json jobs`` and ``scheduler jobs
    --json`` both work and the later one wins."""
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--config", type=Path, help="TOML file with settings (flags and SCHEDULER_* win)", **unset
    )
    parser.add_argument(
        "--database-url",
        help="Postgres URL (env SCHEDULER_DATABASE_URL; default: the embedded server "
        "in the state directory)",
        **unset,
    )
    parser.add_argument(
        "--state-dir",
        help="state directory: runs, logs, embedded Postgres (env SCHEDULER_STATE_DIR; "
        "default: /var/lib/scheduler as root)",
        **unset,
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output",
        **({"default": False} if top else unset),
    )


def bounded_int(low: int, high: int, what: str = "a whole number") -> Callable[[str], int]:
    """A converter for an integer in [low, high] whose error says the range."""

    def convert(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {what}: expected an integer in [{low}, {high}]"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected [{low}, {high}]")
        return value

    convert.__name__ = "integer"
    return convert


def job_id(text: str) -> int:
    """A job id: a positive bigint."""
    return bounded_int(1, INT8_MAX, "a job id")(text)


# As scheduler.depends_on_max() (migrations/0014).
MAX_AFTER = 1000


def job_ids(text: str) -> list[int]:
    """``--after 12,13``: job ids separated by commas, each once, at most MAX_AFTER."""
    parts = text.split(",")
    if len(parts) > MAX_AFTER:
        raise argparse.ArgumentTypeError(f"{len(parts)} job ids: at most {MAX_AFTER}")
    if any(not part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected job ids like 12,13")
    ids = [job_id(part) for part in parts]
    if len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"{text[:60]!r} names a job more than once")
    return ids


job_ids.__name__ = "job ids"


def label(text: str) -> tuple[str, str]:
    """``key=value``; the key is non-empty and has no '='."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. team=ml)")
    return key, value


def array_range(text: str) -> tuple[int, int, int | None]:
    """``START-END[%MAX_RUNNING]`` (e.g. 0-99%10): the indexes, both included, and the cap."""
    match = re.fullmatch(r"(\d{1,10})-(\d{1,10})(?:%(\d{1,10}))?", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text[:70]!r} is not START-END[%MAX_RUNNING] (e.g. 0-99%10)"
        )
    start, end = int(match[1]), int(match[2])
    cap = None if match[3] is None else int(match[3])
    if start > end or end > INT4_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START <= END <= {INT4_MAX}")
    if cap is not None and cap < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: MAX_RUNNING must be at least 1")
    return start, end, cap


def constraint(text: str) -> tuple[str, str]:
    """``key=value``: a label the node must have (scheduler/labels.py's rule)."""
    try:
        return parse_pair(text)
    except LabelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def key_values(pairs: list[tuple[str, str]], flag: str) -> dict[str, str]:
    """Pairs as a dict; a key given twice is an error rather than a silent overwrite."""
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise UsageError(f"{flag} {key}= given twice")
        out[key] = value
    return out


def run_at(text: str) -> datetime:
    """When a job may start: an ISO 8601 time (UTC unless it has an offset) or ``+DURATION``
    from now (e.g. +10m, +1h30m)."""
    raw = text.strip()
    if raw.startswith("+"):
        try:
            seconds = parse_duration(raw[1:])
        except UnitError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (after '+')") from None
        if seconds > 10 * 365 * 86400:
            raise argparse.ArgumentTypeError(f"{text!r} is more than 10 years from now")
        return datetime.now(UTC) + timedelta(seconds=float(seconds))
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use e.g. 2026-12-24T18:00:00Z or +10m (from now)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def last_window(text: str) -> timedelta:
    """``--last 30d``: a window ending now."""
    try:
        seconds = parse_duration(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= 100 * 366 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration in (0, 100 years]")
    return timedelta(seconds=float(seconds))


def check_text(argv: list[str]) -> None:
    """Every argument must be text Postgres can store: UTF-8 without NUL."""
    for position, arg in enumerate(argv, start=1):
        if "\x00" in arg:
            raise UsageError(f"argument {position} contains a NUL character")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise UsageError(
                f"argument {position} ({shown}) is not valid UTF-8: names, commands and "
                "values must be UTF-8 text"
            ) from None
