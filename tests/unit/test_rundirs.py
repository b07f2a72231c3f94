"""An attempt's directory name is made and recognised by one module."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.rundirs import parse_run_dir_name, run_dir_for, run_dir_name


def test_made_and_parsed_by_the_same_rule() -> None:
    assert run_dir_name(42, 3) == "42-3"
    assert run_dir_for(Path("/r"), 42, 3) == Path("/r/42-3")
    for job_id, attempt in ((1, 1), (2**63 - 1, 10**9 - 1)):
        assert parse_run_dir_name(run_dir_name(job_id, attempt)) == (job_id, attempt)


@pytest.mark.parametrize(
    "name", ["images-cache", "1-2-3", "-1-1", "1-", "1-x", "1" * 20 + "-1", "1-" + "1" * 10, ""]
)
def test_other_entries_are_not_attempts(name: str) -> None:
    assert parse_run_dir_name(name) is None
