"""The CLI against a real database: refusals of the database reach a person as one line that
says what is allowed (by the constraint hit, never the raw SQL error or the failing row), and
every database-backed sub-command fed random and hostile arguments shows no traceback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.cli_fuzz import check_no_traceback, command_lines, run_main, tmp_paths
from tests.conftest import with_database

pytestmark = pytest.mark.postgres
BASE = Path("/var/tmp/scheduler-cli-fuzz-db")
BASE.mkdir(exist_ok=True)
PATHS = tmp_paths(BASE)
# Roles are cluster-wide: a random tenant's role would outlive this test's database.
NO_ROLES: set[tuple[str, ...]] = {("tenants", "grant-sql"), ("tenants", "revoke-sql")}


@pytest.fixture
def sync_dsn(
    pg_admin_dsn: str, template_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[str]:
    """A fresh migrated database for a synchronous test (main() runs its own event loop)."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(admin, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    dsn = with_database(pg_admin_dsn, name)
    monkeypatch.setenv("SCHEDULER_DATABASE_URL", dsn)
    monkeypatch.setenv("SCHEDULER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SCHEDULER_CGROUP_ROOT", f"sched-fuzz-absent-{uuid.uuid4().hex[:8]}")
    monkeypatch.delenv("SCHEDULER_DEBUG", raising=False)
    yield dsn
    anyio.run(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["submit", "--timeout", "0s", "--", "true"], "timeout must be more than 0 seconds"),
        (["submit", "--memory", "0", "--", "true"], "at least 1048576 (1 MiB)"),
        (["submit", "--cpu", "5000", "--", "true"], "cpu must be a number of cores in (0, 4096]"),
        (["submit", "--tenant", "nobody-here", "--", "true"], "unknown tenant 'nobody-here'"),
        (["submit", "--cwd", "relative", "--", "true"], "absolute path"),
        (["tenants", "add", "default"], "a tenant with this name already exists"),
        (["tenants", "add", "kid", "--parent", "nobody"], "the parent tenant does not exist"),
        (["tenants", "add", "Bad Name"], "not a valid tenant name"),
        (["tenants", "set", "default", "--cpu", "0"], "cpu must be a positive number"),
        (["tokens", "create", "--tenant", "nobody"], "unknown tenant"),
        (["cancel", "999999"], "no job with id 999999"),
    ],
)
def test_database_refusals_are_one_readable_line(sync_dsn: str, argv: list[str], says: str) -> None:
    code, out, err = run_main(argv)
    assert code in (1, 2), (code, out, err)
    assert says in err and err.count("\n") == 1, err
    for leak in ("violates", "DETAIL", "HINT", "Failing row", "Traceback", 'constraint "'):
        assert leak not in err, err


def test_an_empty_export_says_so_on_stderr(sync_dsn: str) -> None:
    code, out, err = run_main(["billing", "export", "--last", "30d"])
    assert code == 0
    assert out.startswith("job_id") or out.count("\n") <= 1, out  # the header only
    assert "no usage in [" in err and "the export has no rows" in err


def test_labels_and_run_at_reach_the_row(sync_dsn: str) -> None:
    code, out, err = run_main(
        [
            "--json",
            "submit",
            "--label",
            "team=ml",
            "--label",
            "tier=gold",
            "--run-at",
            "+1h",
            "--",
            "true",
        ]
    )
    assert code == 0, err
    assert '"team": "ml"' in out and '"tier": "gold"' in out
    code, _, err = run_main(["submit", "--label", "a=1", "--label", "a=2", "--", "true"])
    assert code == 2 and "--label a= given twice" in err


def test_show_escapes_a_hostile_job_name(sync_dsn: str) -> None:
    name = "evil\x1b[2J\x1b]0;owned\x07\u202e"
    code, out, err = run_main(["submit", "--name", name, "--", "true"])
    assert code == 0, err
    job = out.strip()
    for argv in (["show", job], ["jobs"]):
        code, out, err = run_main(argv)
        assert code == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "evil\\x1b[2J" in out


def test_a_long_tenant_name_does_not_break_the_table(
    sync_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    long_name = "t" * 63
    assert run_main(["tenants", "add", long_name])[0] == 0
    code, out, _ = run_main(["tenants", "list"])
    assert code == 0
    assert all(len(line) <= 80 for line in out.splitlines()), out


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=command_lines(PATHS, skip=NO_ROLES))
@example(argv=["billing", "check", "--no-metrics", "--json"])
def test_no_command_line_shows_a_traceback_against_a_database(
    sync_dsn: str, argv: list[str]
) -> None:
    check_no_traceback(argv, run_main)
