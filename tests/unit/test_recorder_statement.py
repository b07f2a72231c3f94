"""The recorder's one statement per batch, composed from two queries.sql blocks (pure)."""

from __future__ import annotations

import re
import time

from scheduler.agent.recorder import Completion, _record_args
from scheduler.cgroups.base import Usage
from scheduler.db.queries import q
from scheduler.jobs import Outcome
from scheduler.repos.attempts import RECORD as _RECORD
from tests.factories import job

JOB = job()


def _params(sql: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", sql)}


def test_the_statement_numbers_both_blocks_parameters_in_turn() -> None:
    finish, closing = len(_params(q("finish_jobs"))), len(_params(q("insert_closing_usage")))
    assert _params(_RECORD) == set(range(1, finish + closing + 1))
    # The blocks' terminators are gone: one statement.
    code = [line for line in _RECORD.splitlines() if not line.lstrip().startswith("--")]
    assert not any(";" in line for line in code)


def test_one_argument_per_parameter() -> None:
    now = time.time_ns()
    ended = Completion(
        JOB, "n1", None, Outcome("succeeded", 0, None, False, None, False), Usage(), now, now
    )
    args = _record_args([ended, ended])
    assert len(args) == len(_params(_RECORD))
    assert all(len(column) == 2 for column in args)
