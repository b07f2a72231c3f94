"""Cost by label and closed statements (issue 19, items 3 and 4), on a real agent's usage:
labels in FOCUS Tags and the CSV/JSON exports, `--group-by label:KEY`, `billing close` and
`billing verify`, a tampered row or rate caught, a late (spooled, replayed) row billed in the
next open month, and the statements' row-level security."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
import pytest

from scheduler.accounting import billing
from scheduler.accounting.spoolfile import UsageRow as SpoolRow
from scheduler.accounting.spoolfile import encode
from scheduler.accounting.statements import CloseRefused, close, verify
from scheduler.agent.spool import SUFFIX
from scheduler.api.auth import create_token
from scheduler.db.pool import connect
from scheduler.sqlaccess import grant_sql
from tests.conftest import AgentHandle, agent_settings, slow, start_agent, write_as_agent
from tests.integration.test_agent import submit, wait_final

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer test-admin-token"}

FAST = {"sample_interval": 0.2, "sample_interval_floor": 0.1}
BUSY = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 0.4"
RATES = """INSERT INTO scheduler.rates (resource, tenant, price, currency) VALUES
           ('cpu_second', NULL, 0.0001, 'USD'), ('memory_gib_hour', NULL, 0.005, 'USD'),
           ('io_gib', NULL, 0.02, 'USD')"""


@pytest.fixture(autouse=True)
async def _writes_as_agent(db: asyncpg.Connection) -> None:
    await write_as_agent(db)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def run_labelled_jobs(
    dsn: str,
    db: asyncpg.Connection,
    state_dir: Path,
    cgroup_root: str,
    jobs: list[tuple[str, str, dict[str, object]]],
) -> list[int]:
    """Run (tenant, name, labels) jobs on a real agent to the end; their ids."""
    async with anyio.create_task_group() as tg:
        await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root, **FAST))
        ids = [
            await submit(db, ["sh", "-c", BUSY], tenant=tenant, name=name, labels=labels)
            for tenant, name, labels in jobs
        ]
        await wait_final(db, ids, timeout=60)
        tg.cancel_scope.cancel()
    return ids


def window(dsn: str) -> list[str]:
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    end = start + timedelta(hours=2)
    return ["--database-url", dsn, "--from", start.isoformat(), "--to", end.isoformat()]


async def test_labels_reach_focus_tags_csv_json_and_group_by_sums_them(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    acme = unique("acme")
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1)", acme)
    labels: list[dict[str, object]] = [
        {"team": "web", "env": "prod"},
        {"team": "web", "zones": ["a", "b"]},
        {"team": "db", "n": 3},
        {},
        {"team": '=HYPERLINK("http://evil")'},
        {"team": "(none)"},
    ]
    ids = await run_labelled_jobs(
        dsn,
        db,
        state_dir,
        cgroup_root,
        [
            (acme, "=cmd|' /C calc'!A0" if i == 4 else f"job{i}", lab)
            for i, lab in enumerate(labels)
        ],
    )
    by_id = dict(zip(ids, labels, strict=True))
    await db.execute(RATES)
    span = window(dsn)

    focus = cli("billing", "export", *span, "--format", "focus", "--tenant", acme)
    assert focus.returncode == 0, focus.stderr
    rows = list(csv.DictReader(io.StringIO(focus.stdout)))
    assert {int(r["ResourceId"]) for r in rows} == set(ids)
    for r in rows:
        # FOCUS tag values are scalars: a list is given as its JSON text.
        assert json.loads(r["Tags"]) == {
            k: json.dumps(v, separators=(",", ":")) if isinstance(v, list) else v
            for k, v in by_id[int(r["ResourceId"])].items()
        }
    assert {r["Tags"] for r in rows if int(r["ResourceId"]) == ids[1]} == {
        '{"team": "web", "zones": "[\\"a\\",\\"b\\"]"}'
    }
    # The job name a tenant chose cannot run as a spreadsheet formula.
    assert {r["ResourceName"] for r in rows if int(r["ResourceId"]) == ids[4]} == {
        "'=cmd|' /C calc'!A0"
    }

    plain = cli("billing", "export", *span, "--format", "csv", "--tenant", acme)
    assert plain.returncode == 0, plain.stderr
    lines = list(csv.DictReader(io.StringIO(plain.stdout)))
    for r in lines:
        assert r["labels"].startswith("{")  # a JSON object: never a formula
        assert json.loads(r["labels"]) == by_id[int(r["job_id"])]
    assert {r["job_name"] for r in lines if int(r["job_id"]) == ids[4]} == {"'=cmd|' /C calc'!A0"}

    document = json.loads(cli("billing", "export", *span, "--format", "json").stdout)
    for ln in document["lines"]:
        if ln["tenant"] == acme:
            assert json.loads(ln["labels"]) == by_id[int(ln["job_id"])]
    assert document["lines"][0]["job_name"] in {f"job{i}" for i in range(6)} | {
        "=cmd|' /C calc'!A0"  # JSON is data, not a spreadsheet: kept as the tenant wrote it
    }

    # Expected sums per team, from the plain export's own lines.
    expected: dict[tuple[bool, str], Decimal] = {}
    for ln in document["lines"]:
        if ln["tenant"] != acme:
            continue
        team = json.loads(ln["labels"]).get("team")
        key = (team is not None, "" if team is None else str(team))
        expected[key] = expected.get(key, Decimal(0)) + Decimal(ln["cost"])
    grouped = cli(
        "billing", "export", *span, "--tenant", acme, "--format", "json", "--group-by", "label:team"
    )
    assert grouped.returncode == 0, grouped.stderr
    doc = json.loads(grouped.stdout)
    assert doc["group_by"] == "label:team"
    got = {(g["labelled"], g["value"] or ""): Decimal(g["cost"]) for g in doc["groups"]}
    assert got == expected
    assert set(got) == {
        (True, "web"),
        (True, "db"),
        (False, ""),
        (True, '=HYPERLINK("http://evil")'),
        (True, "(none)"),
    }
    none = [g for g in doc["groups"] if not g["labelled"]]
    assert none == [
        {
            "label": "team",
            "value": None,
            "labelled": False,
            "currency": "USD",
            "cost": none[0]["cost"],
            "lines": none[0]["lines"],
            "jobs": 1,
        }
    ]
    web = [g for g in doc["groups"] if g["value"] == "web"]
    assert web[0]["jobs"] == 2
    assert (
        sum(got.values())
        == Decimal(doc["totals"]["USD"])
        == sum(Decimal(ln["cost"]) for ln in document["lines"] if ln["tenant"] == acme)
        > 0
    )

    as_csv = cli("billing", "export", *span, "--tenant", acme, "--group-by", "label:team")
    assert as_csv.returncode == 0, as_csv.stderr
    groups = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [g["value"] for g in groups if g["labelled"] == "false"] == ["(none)"]
    # A label value is tenant text: neutralised in CSV like a job name.
    assert '\'=HYPERLINK("http://evil")' in {g["value"] for g in groups}
    assert sum(Decimal(g["cost"]) for g in groups) == Decimal(doc["totals"]["USD"])

    for bad in ("team", "label:", "label:" + "k" * 129, "label:a\x01b"):
        refused = cli("billing", "export", *span, "--group-by", bad)
        assert refused.returncode != 0
        assert "label:KEY" in refused.stderr
    refused = cli("billing", "export", *span, "--format", "focus", "--group-by", "label:team")
    assert refused.returncode != 0 and "Tags" in refused.stderr


async def test_labels_are_bounded_at_insert(db: asyncpg.Connection) -> None:
    for labels, what in [
        ({f"k{i}": "v" for i in range(65)}, "65 keys"),
        ({"k" * 129: "v"}, "a 129-byte key"),
        ({"": "v"}, "an empty key"),
        ({"k": "v" * 9000}, "9000 bytes"),
        ({"a\nb": "v"}, "a newline in a key"),
    ]:
        with pytest.raises(asyncpg.CheckViolationError, match="job_labels_bounded"):
            await submit(db, ["true"], labels=labels)
        del what
    # What 0001 allowed and stays allowed: any JSON value, 64 keys, a 128-byte key.
    await submit(db, ["true"], labels={f"k{i}": [i, 0.5] for i in range(64)})
    await submit(db, ["true"], labels={"k" * 128: {"deep": True}})


def month_text(at: datetime) -> str:
    return f"{at:%Y-%m}"


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def test_closed_statements_verify_catch_tampering_and_bill_late_usage_next_month(
    dsn: str, db: asyncpg.Connection, state_dir: Path, cgroup_root: str
) -> None:
    acme, zeta = unique("acme"), unique("zeta")
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1), ($2)", acme, zeta)
    ids = await run_labelled_jobs(
        dsn,
        db,
        state_dir,
        cgroup_root,
        [(acme, "a1", {"team": "web"}), (acme, "a2", {}), (zeta, "z1", {"team": "db"})],
    )
    await db.execute(RATES)
    # Only a past month closes. The agent meters now, so copies of its real rows are moved
    # into last month (new seqs and attempts; the rows themselves are as the agent wrote them).
    now: datetime = await db.fetchval("SELECT now()")
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    shift = now - (last_month + timedelta(days=14))
    await db.execute(
        """INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,
               period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes, io_read_bytes,
               io_write_bytes, final)
           SELECT job_id, seq + 1000, attempt + 1000, tenant, node, period_start - $2::interval,
                  period_end - $2::interval, cpu_seconds, memory_byte_seconds, memory_peak_bytes,
                  io_read_bytes, io_write_bytes, final
           FROM scheduler.usage WHERE job_id = ANY($1)""",
        ids,
        shift,
    )
    period = month_text(last_month)
    closed = cli("billing", "close", "--period", period, "--database-url", dsn)
    assert closed.returncode == 0, closed.stderr
    assert f"closed {period}: 2 statements" in closed.stderr
    statements = await db.fetch(
        "SELECT * FROM scheduler.statements WHERE period = $1 ORDER BY tenant", last_month.date()
    )
    assert [s["tenant"] for s in statements] == sorted([acme, zeta])
    month_window = ["--from", last_month.isoformat(), "--to", this_month.isoformat()]
    for s in statements:
        assert s["sha256"] == hashlib.sha256(s["body"].encode()).hexdigest()
        assert s["sha256"] in closed.stdout
        # The statement is the month's JSON export, byte for byte.
        export = cli(
            "billing", "export", "--database-url", dsn, *month_window,
            "--format", "json", "--tenant", s["tenant"],
        )  # fmt: skip
        assert export.stdout == s["body"]
        assert Decimal(json.loads(s["body"])["totals"]["USD"]) > 0
    assert (
        "already closed"
        in cli("billing", "close", "--period", period, "--database-url", dsn).stderr
    )
    for refused, why in [
        (month_text(this_month), "not over"),
        (month_text(this_month + timedelta(days=40)), "not over"),
        (month_text(last_month - timedelta(days=1)), "close in order"),
        ("2026-13", "YYYY-MM"),
    ]:
        result = cli("billing", "close", "--period", refused, "--database-url", dsn)
        assert result.returncode == 1 and why in result.stderr, (refused, result.stderr)
    verified = cli("billing", "verify", "--database-url", dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "checked 2 closed statements: every one verifies" in verified.stderr

    # A row of last month that the agent spooled and replays only now, after the close.
    late_cpu = Decimal("1.5")
    spool = state_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    end_us = int((this_month - timedelta(seconds=5)).timestamp() * 1_000_000)
    (spool / f"{1:020d}{SUFFIX}").write_bytes(
        encode(
            [
                SpoolRow(
                    job_id=ids[0], seq=5000, attempt=2000, tenant=acme, node="late-node",
                    start_us=end_us - 4_000_000, end_us=end_us, cpu_seconds=late_cpu,
                    memory_byte_seconds=Decimal(0), memory_peak_bytes=0,
                    io_read_bytes=0, io_write_bytes=0,
                )
            ]
        )
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await start_agent(tg, agent_settings(dsn, state_dir, cgroup_root, **FAST))
        with anyio.fail_after(slow(30)):
            while not await db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM scheduler.usage WHERE job_id = $1 AND seq = 5000)",
                ids[0],
            ):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    acme_statement = next(s for s in statements if s["tenant"] == acme)
    again = cli(
        "billing", "export", "--database-url", dsn, *month_window, "--format", "json",
        "--tenant", acme,
    )  # fmt: skip
    assert again.stdout == acme_statement["body"]  # the closed month did not move
    verified = cli("billing", "verify", "--database-url", dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    next_window = ["--from", this_month.isoformat(), "--to", (now + timedelta(hours=1)).isoformat()]
    current = json.loads(
        cli(
            "billing", "export", "--database-url", dsn, *next_window, "--format", "json",
            "--tenant", acme,
        ).stdout
    )  # fmt: skip
    note = f"late usage from {period}, job {ids[0]}"
    late = [ln for ln in current["lines"] if ln["note"] == note]
    assert [(ln["resource"], Decimal(ln["consumed_quantity"])) for ln in late] == [
        ("cpu_second", late_cpu)
    ]
    assert late[0]["charge_period_start"] == this_month.isoformat().replace("+00:00", "Z")
    assert json.loads(late[0]["labels"]) == {"team": "web"}
    focus = cli(
        "billing", "export", "--database-url", dsn, *next_window, "--format", "focus",
        "--tenant", acme,
    )  # fmt: skip
    assert [
        r
        for r in csv.DictReader(io.StringIO(focus.stdout))
        if r["ChargeDescription"].startswith(note)
    ]

    # Tenant roles: read their own statements only, write none.
    role, password = await grant_sql(db, acme)
    tenant = await connect(as_role(dsn, role, password))
    try:
        seen = await tenant.fetch("SELECT tenant, sha256 FROM scheduler.statements")
        assert [(r["tenant"], r["sha256"]) for r in seen] == [(acme, acme_statement["sha256"])]
        assert {
            r["tenant"] for r in await tenant.fetch("SELECT tenant FROM scheduler.statement_usage")
        } == {acme}
        for sql in (
            "UPDATE scheduler.statements SET body = '{}'",
            "DELETE FROM scheduler.statements",
            "INSERT INTO scheduler.statements (period, tenant, body, sha256, totals, lines,"
            " usage_rows, late_rows) SELECT period, tenant, body, sha256, totals, 0, 0, 0"
            " FROM scheduler.statements",
            "DELETE FROM scheduler.statement_usage",
            "INSERT INTO scheduler.billing_periods (period) VALUES ('2001-01-01')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await tenant.execute(sql)
        closing = subprocess.run(
            [sys.executable, "-m", "scheduler.cli", "billing", "close", "--period",
             month_text(this_month - timedelta(days=40)), "--database-url",
             as_role(dsn, role, password)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert closing.returncode == 1 and "operator" in closing.stderr
    finally:
        await tenant.close()
    # Nor does the owner edit one without bypassing the guard on purpose.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE scheduler.statements SET body = body || ' '")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM scheduler.statement_usage")

    # The owner bypasses usage's append-only guard to change a billed row of acme's month,
    # and changes zeta's price for it: verify names both.
    await db.execute("ALTER TABLE scheduler.usage DISABLE TRIGGER usage_append_only")
    await db.execute(
        """UPDATE scheduler.usage SET cpu_seconds = cpu_seconds + 7
           WHERE job_id = $1 AND seq = (SELECT min(seq) FROM scheduler.usage
                                        WHERE job_id = $1 AND seq > 1000 AND seq < 5000)""",
        ids[1],
    )
    await db.execute("ALTER TABLE scheduler.usage ENABLE TRIGGER usage_append_only")
    await db.execute(
        "INSERT INTO scheduler.rates (resource, tenant, price, currency)"
        " VALUES ('cpu_second', $1, 0.5, 'USD')",
        zeta,
    )
    failed = cli("billing", "verify", "--database-url", dsn)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    report = failed.stdout
    assert f"statement {period} of tenant {acme}: job {ids[1]} cpu_second" in report
    assert f"statement {period} of tenant {zeta}: job {ids[2]} cpu_second" in report
    assert "2 closed statements" in failed.stderr
    as_json = json.loads(cli("billing", "verify", "--database-url", dsn, "--json").stdout)
    assert as_json["statements_checked"] == 2 and len(as_json["differences"]) >= 2
    # A statement edited in place by the owner, past its guard, no longer matches its digest.
    await db.execute("ALTER TABLE scheduler.statements DISABLE TRIGGER statements_append_only")
    await db.execute(
        'UPDATE scheduler.statements SET body = replace(body, \'"USD": "\', \'"USD": "0\')'
        " WHERE tenant = $1",
        acme,
    )
    await db.execute("ALTER TABLE scheduler.statements ENABLE TRIGGER statements_append_only")
    edited = cli("billing", "verify", "--database-url", dsn, "--tenant", acme)
    assert edited.returncode == 1
    assert f"statement {period} of tenant {acme}: its body no longer hashes" in edited.stdout


async def test_statements_and_group_by_over_http(
    agent: AgentHandle, db: asyncpg.Connection
) -> None:
    alpha, beta = unique("alpha"), unique("beta")
    await db.execute("INSERT INTO scheduler.tenants (name) VALUES ($1), ($2)", alpha, beta)
    await db.execute(RATES)
    async with httpx.AsyncClient(base_url=f"http://{agent.ready.http}", timeout=60) as api:
        ids = []
        for tenant, labels in ((alpha, {"team": "web"}), (beta, {})):
            r = await api.post(
                "/v1/jobs",
                headers=ADMIN,
                json={"argv": ["sh", "-c", BUSY], "tenant": tenant, "labels": labels},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        await wait_final(db, ids, timeout=60)
        too_many = await api.post(
            "/v1/jobs",
            headers=ADMIN,
            json={"argv": ["true"], "labels": {f"k{i}": "v" for i in range(65)}},
        )
        assert too_many.status_code == 422 and "at most 64 labels" in too_many.text
        window = {"from": "2000-01-01", "to": "2100-01-01"}
        grouped = await api.get(
            "/v1/billing/export",
            headers=ADMIN,
            params={**window, "format": "json", "group_by": "label:team"},
        )
        assert grouped.status_code == 200, grouped.text
        assert {(g["value"], g["labelled"]) for g in grouped.json()["groups"]} == {
            ("web", True),
            (None, False),
        }
        bad = await api.get(
            "/v1/billing/export", headers=ADMIN, params={**window, "group_by": "team"}
        )
        assert bad.status_code == 422 and "label:KEY" in bad.text

        now: datetime = await db.fetchval("SELECT now()")
        this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        last_month = (this_month - timedelta(days=1)).replace(day=1)
        await db.execute(
            """INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,
                   period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes,
                   io_read_bytes, io_write_bytes, final)
               SELECT job_id, seq + 1000, attempt + 1000, tenant, node,
                      period_start - $2::interval, period_end - $2::interval, cpu_seconds,
                      memory_byte_seconds, memory_peak_bytes, io_read_bytes, io_write_bytes,
                      final
               FROM scheduler.usage WHERE job_id = ANY($1)""",
            ids,
            now - (last_month + timedelta(days=3)),
        )
        made = await close(db, last_month.date())
        assert {s.tenant for s in made} == {alpha, beta}
        everything = await api.get("/v1/billing/statements", headers=ADMIN)
        assert everything.status_code == 200, everything.text
        listed = everything.json()["statements"]
        assert {s["tenant"] for s in listed} == {alpha, beta}
        for s in listed:
            assert hashlib.sha256(s["body"].encode()).hexdigest() == s["sha256"]
            assert s["period"] == month_text(last_month)
        _, token = await create_token(db, alpha)
        mine = await api.get("/v1/billing/statements", headers={"Authorization": f"Bearer {token}"})
        assert [s["tenant"] for s in mine.json()["statements"]] == [alpha]
        theirs = await api.get(
            "/v1/billing/statements",
            headers={"Authorization": f"Bearer {token}"},
            params={"tenant": beta},
        )
        assert theirs.status_code == 404
        assert (
            await api.get("/v1/billing/statements", headers=ADMIN, params={"period": "11/2026"})
        ).status_code == 400


async def test_two_closes_of_one_month_at_once_make_one(dsn: str, db: asyncpg.Connection) -> None:
    now: datetime = await db.fetchval("SELECT now()")
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(day=1).date()
    others = [await connect(dsn) for _ in range(4)]
    outcomes: list[str] = []

    async def one(conn: asyncpg.Connection) -> None:
        try:
            await close(conn, last_month)
        except CloseRefused as exc:
            outcomes.append(str(exc))
        else:
            outcomes.append("closed")

    try:
        async with anyio.create_task_group() as tg:
            for conn in others:
                tg.start_soon(one, conn)
    finally:
        for conn in others:
            await conn.close()
    assert sorted(outcomes)[-1] == "closed"
    assert outcomes.count("closed") == 1
    assert all("is already closed" in o for o in outcomes if o != "closed"), outcomes
    assert await db.fetchval("SELECT count(*) FROM scheduler.billing_periods") == 1


async def test_the_next_close_seals_late_usage_in_its_month(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(RATES)
    job = await submit(db, ["true"], labels={"team": "late"})
    now: datetime = await db.fetchval("SELECT now()")
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    one_back = (this_month - timedelta(days=1)).replace(day=1)
    two_back = (one_back - timedelta(days=1)).replace(day=1)

    async def row(seq: int, end: datetime, cpu: str) -> None:
        await db.execute(
            """INSERT INTO scheduler.usage (job_id, seq, attempt, tenant, node, period_start,
                   period_end, cpu_seconds, memory_byte_seconds, memory_peak_bytes,
                   io_read_bytes, io_write_bytes)
               VALUES ($1, $2, 1, 'default', 'n', $3::timestamptz - interval '10 s', $3, $4::numeric,
                       0, 0, 0, 0)""",
            job,
            seq,
            end,
            cpu,
        )

    await row(1, two_back + timedelta(days=2), "2")
    await row(2, one_back + timedelta(days=2), "3")
    first = await close(db, two_back.date())
    await row(3, one_back - timedelta(seconds=1), "5")  # late for the closed month two back
    second = await close(db, one_back.date())
    assert [s.late_rows for s in first] == [0] and [s.late_rows for s in second] == [1]
    document = json.loads(second[0].body)
    note = f"late usage from {month_text(two_back)}, job {job}"
    assert [(ln["note"], ln["consumed_quantity"]) for ln in document["lines"]] == [
        (note, "5"),
        ("", "3"),
    ]
    assert document["lines"][0]["charge_period_start"] == one_back.isoformat().replace(
        "+00:00", "Z"
    )
    for month, made in ((two_back, first[0]), (one_back, second[0])):
        again, _ = await billing.export_counted(
            db, start=month, end=(month + timedelta(days=32)).replace(day=1), fmt="json",
            tenant="default",
        )  # fmt: skip
        assert again == made.body
    # Sealed: the open month no longer bills it.
    current, _ = await billing.export_counted(db, start=this_month, end=now, fmt="json")
    assert json.loads(current)["lines"] == []
    assert await verify(db) == (2, [])
