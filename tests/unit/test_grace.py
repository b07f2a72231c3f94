"""agent/grace.py without an agent: the SIGTERM goes out once per attempt and its time is
kept; a grace body field is bounded like the column."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from scheduler.agent import grace
from scheduler.api.bodies import job_request
from scheduler.api.problems import Problem


def test_terminate_signals_once_and_keeps_the_time(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"],
    )
    try:
        procs = tmp_path / "cgroup.procs"
        procs.write_text(f"{child.pid}\n")
        monitor_dir = tmp_path / "run"
        monitor_dir.mkdir()
        before = time.time_ns()
        sent = grace.terminate(str(procs), monitor_dir)
        assert before <= sent <= time.time_ns()
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert grace.read_term(monitor_dir) == sent
        # A second call (another agent after a restart) sends nothing and keeps the time.
        assert grace.terminate(str(procs), monitor_dir) == sent
        assert 0 < grace.remaining(sent, 5.0) <= 5.0
        assert grace.remaining(sent - 10 * 10**9, 5.0) < 0
    finally:
        child.kill()
        child.wait()


def test_an_odd_term_file_counts_as_not_sent(tmp_path: Path) -> None:
    (tmp_path / grace.TERM_FILE).write_text("soon\n")
    assert grace.read_term(tmp_path) is None
    assert grace.read_term(None) is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), ("2.5", True), (3600, True), (-1, False), (3601, False), (True, False)],
)
def test_kill_grace_body_field(value: object, ok: bool) -> None:
    body = {"argv": ["true"], "kill_grace_seconds": value}
    if ok:
        assert job_request(body, "default").kill_grace_seconds == Decimal(str(value))
    else:
        with pytest.raises(Problem, match="kill_grace_seconds"):
            job_request(body, "default")
