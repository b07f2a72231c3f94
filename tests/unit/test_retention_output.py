"""agent/retention.remove_old_output on a real directory tree: only old attempt directories
of attempts not running go; names, symlinks and future dates cannot steer it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from scheduler.agent.retention import remove_old_output

DAY = 86400


def attempt_dir(runs: Path, name: str, age: float, *, future_file: bool = False) -> Path:
    directory = runs / name
    (directory / "upper" / "etc").mkdir(parents=True)
    (directory / "stdout").write_text("out\n")
    (directory / "upper" / "etc" / "data").write_text("x" * 100)
    then = time.time() - age
    for root, dirs, files in os.walk(directory, topdown=False):
        for entry in [*dirs, *files]:
            os.utime(Path(root) / entry, (then, then))
    os.utime(directory, (then, then))
    if future_file:  # the job dated a file of its writable layer far ahead
        ahead = time.time() + 365 * DAY
        os.utime(directory / "upper" / "etc" / "data", (ahead, ahead))
    return directory


def test_only_old_attempts_not_running_are_removed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    old = attempt_dir(runs, "1-1", 2 * DAY)
    dated_ahead = attempt_dir(runs, "2-1", 2 * DAY, future_file=True)
    recent = attempt_dir(runs, "3-1", DAY / 2)
    running = attempt_dir(runs, "4-2", 2 * DAY)
    other = attempt_dir(runs, "images-cache", 2 * DAY)
    outside = attempt_dir(tmp_path, "elsewhere", 2 * DAY)
    (runs / "5-1").symlink_to(outside)
    removed, size = remove_old_output(runs, time.time() - DAY, frozenset({(4, 2)}), limit=100)
    assert (removed, size) == (2, 2 * (4 + 100))
    assert not old.exists() and not dated_ahead.exists()
    assert recent.exists() and running.exists() and other.exists()
    assert (outside / "stdout").exists() and (runs / "5-1").is_symlink()


def test_a_sweep_removes_at_most_its_limit(tmp_path: Path) -> None:
    for n in range(5):
        attempt_dir(tmp_path, f"{n + 1}-1", 2 * DAY)
    assert remove_old_output(tmp_path, time.time() - DAY, frozenset(), limit=3)[0] == 3
    assert len(list(tmp_path.iterdir())) == 2
    assert remove_old_output(tmp_path / "missing", time.time(), frozenset(), limit=3) == (0, 0)
