from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import pytest

from scheduler.cgroups.base import Usage
from scheduler.db.migrate import load_migrations
from scheduler.db.queries import QUERIES
from scheduler.errors import MigrationError
from scheduler.jobs import byte_seconds, cpu_seconds, decide_outcome, retry_delay_seconds
from scheduler.runtime.spec import ExitRecord


def record(
    kind: str = "exited", code: int | None = 0, sig: int | None = None, error: str | None = None
) -> ExitRecord:
    return ExitRecord(kind, code, sig, error, 1, 2, 0, 0, 0)  # type: ignore[arg-type]


def test_outcomes() -> None:
    ok = decide_outcome(
        record(), Usage(), timed_out=False, cancelled=False, attempts=1, max_attempts=1
    )
    assert (ok.state, ok.exit_code, ok.retry) == ("succeeded", 0, False)
    bad = decide_outcome(
        record(code=2), Usage(), timed_out=False, cancelled=False, attempts=1, max_attempts=3
    )
    assert (bad.state, bad.retry) == ("failed", True)
    sig = decide_outcome(
        record("signaled", None, 9),
        Usage(),
        timed_out=False,
        cancelled=False,
        attempts=1,
        max_attempts=1,
    )
    assert (sig.state, sig.signal, sig.exit_code) == ("failed", 9, None)
    oom = decide_outcome(
        record("signaled", None, 9),
        Usage(oom_kills=1),
        timed_out=False,
        cancelled=False,
        attempts=1,
        max_attempts=1,
    )
    assert oom.oom_killed and oom.error is not None and "out of memory" in oom.error
    start = decide_outcome(
        record("start_error", None, None, "exec: /x: No such file"),
        Usage(),
        timed_out=False,
        cancelled=False,
        attempts=1,
        max_attempts=5,
    )
    assert (start.state, start.retry) == ("failed", False)  # retrying cannot make /x appear
    assert start.error == "exec: /x: No such file"
    late = decide_outcome(
        record("signaled", None, 15),
        Usage(),
        timed_out=True,
        cancelled=False,
        attempts=1,
        max_attempts=1,
    )
    assert late.state == "timed_out"
    lost = decide_outcome(
        None, Usage(), timed_out=False, cancelled=False, attempts=1, max_attempts=1
    )
    assert lost.state == "failed" and lost.error and "monitor" in lost.error


def test_exact_units() -> None:
    assert cpu_seconds(1_234_567_891) == Decimal("1.234567891")
    assert byte_seconds(1000, 0, 500_000_000) == Decimal(500)


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [retry_delay_seconds(a, rng=rng) for a in range(1, 12)]
    assert delays[0] <= 1.0
    assert delays[3] > delays[0]
    assert max(delays) <= 300


def test_queries_and_migrations_load() -> None:
    assert {"claim_jobs", "finish_jobs", "insert_closing_usage"} <= set(QUERIES)
    assert load_migrations()[0].version == 1


def test_the_claim_sql_lives_in_one_place() -> None:
    # queries.sql only calls the function; its body (one migration) holds the statement.
    assert "scheduler.claim_jobs(" in QUERIES["claim_jobs"]
    assert "SKIP LOCKED" not in QUERIES["claim_jobs"]
    defining = [m for m in load_migrations() if "FUNCTION scheduler.claim_jobs(" in m.sql]
    assert defining
    assert "FOR UPDATE OF j SKIP LOCKED" in defining[-1].sql


def test_migration_files_must_be_in_sequence(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="out of sequence"):
        load_migrations(tmp_path)
    (tmp_path / "oops.sql").write_text("")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)
