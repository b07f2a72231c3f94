"""structlog setup: one line per event, key=value (console) or JSON."""

from __future__ import annotations

import logging
import sys

import structlog


class _Threshold:
    """The lowest level configure() lets through; structlog's default (not configured yet)
    passes every level."""

    level = logging.NOTSET


def enabled(level: int) -> bool:
    """Whether events at ``level`` (logging.INFO, ...) are written. A call at a level that is
    filtered out still binds a logger and computes its arguments: a per-job event whose
    arguments cost something checks this first."""
    return level >= _Threshold.level


def configure(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog for the process; safe to call more than once."""
    min_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _Threshold.level = min_level
