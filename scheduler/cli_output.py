"""Kept for scheduler/api/status.py, which escapes text with it: the CLI's output helpers are
in scheduler/cli/output.py now (the integrator points that import there and removes this)."""

from scheduler.cli.output import escape

__all__ = ["escape"]
