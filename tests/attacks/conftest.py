"""The attack suite: a hostile tenant (token, SQL role) or anonymous client against a real
agent and Postgres. Each test ends with :func:`tests.attacks.outcomes.record`; the table of
attack -> outcome is printed at the end of the run, like the fault suite's counts."""

from __future__ import annotations

import pytest

from tests.attacks.outcomes import RESULTS, table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("attacks (what a hostile client tried -> what happened)")
    for line in table(RESULTS):
        terminalreporter.write_line(line)
