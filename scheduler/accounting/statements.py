"""Closed statements: seal a UTC month per tenant, and prove later that nothing changed.

`close` prices a past month exactly as `billing export --format json --tenant T` does and
stores, per tenant with anything to bill, those bytes, their SHA-256 and which usage rows they
priced (scheduler.statement_usage, migrations/0018). The usage table itself is not marked.

Late usage: a row whose period ends in a closed month but that the month's statement does not
cover was committed after the close (a spooled row replayed later, an agent's last rows). It
never changes the closed statement: the exports bill it at the first instant of the first
open month, on its own line ("late usage from 2026-11, job N"), and closing that month seals
it there. Months close in order, so the open months always follow the closed ones.

`verify` recomputes every statement from the rows it covers as they are now and the rates as
they are now, and names each statement whose bytes differ, and what differs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, date
from decimal import Decimal
from typing import Any

import structlog

from scheduler.accounting.billing import (
    month_start,
    next_month,
    rate_from_row,
    usage_row,
    window_rows,
)
from scheduler.accounting.export import UsageRow, price, render
from scheduler.db.pool import Conn
from scheduler.errors import SchedulerError
from scheduler.repos import statements as statements_repo
from scheduler.repos import usage as usage_repo

log = structlog.get_logger(__name__)

MONTH = re.compile(r"(\d{4})-(\d{2})")


class CloseRefused(SchedulerError):
    """The month cannot be closed (not over yet, already closed, out of order)."""


def parse_month(text: str) -> date:
    """``2026-11`` as the first day of that month, or a clear error."""
    found = MONTH.fullmatch(text.strip())
    if (
        found is None
        or not 1 <= int(found.group(2)) <= 12
        or not 1970 <= int(found.group(1)) < 9999
    ):
        raise CloseRefused(f"--period {text[:40]!r}: expected a month as YYYY-MM, e.g. 2026-11")
    return date(int(found.group(1)), int(found.group(2)), 1)


def month_name(month: date) -> str:
    return f"{month:%Y-%m}"


def digest(body: str) -> str:
    """The statement's digest: SHA-256 of its exact bytes (UTF-8), lower-case hex."""
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Statement:
    """One tenant's statement of a month, as closed."""

    period: date
    tenant: str
    body: str
    sha256: str
    totals: dict[str, str]
    lines: int
    usage_rows: int
    late_rows: int

    def summary(self) -> dict[str, Any]:
        return {
            "period": month_name(self.period),
            "tenant": self.tenant,
            "sha256": self.sha256,
            "totals": self.totals,
            "lines": self.lines,
            "usage_rows": self.usage_rows,
            "late_rows": self.late_rows,
        }


def _statement(
    month: date, tenant: str, rows: list[UsageRow], rates: list[Any]
) -> tuple[Statement, list[UsageRow]]:
    start, end = month_start(month), next_month(month)
    lines = price(rows, rates, start=start, end=end)
    body = render(lines, "json", start=start, end=end, tenant=tenant)
    totals = json.loads(body)["totals"]
    late = sum(1 for r in rows if r.billed_at is not None)
    return Statement(month, tenant, body, digest(body), totals, len(lines), len(rows), late), rows


async def close(conn: Conn, month: date) -> list[Statement]:
    """Seal ``month`` (its first day): one statement per tenant with usage to bill in it.

    Refused for a month not over yet (by the database's clock), one already closed, and one
    that is not the month after the last closed one. Nothing is written unless all is.
    """
    if await statements_repo.caller_is_tenant(conn):
        raise CloseRefused("billing close is the operator's: a tenant cannot close a month")
    async with conn.transaction(isolation="repeatable_read"):
        # The first statement, before any read takes the transaction's snapshot: that
        # snapshot then sees every close committed before ours.
        await statements_repo.lock_periods(conn)
        now = await statements_repo.now(conn)
        end = next_month(month)
        if end > now:
            raise CloseRefused(
                f"{month_name(month)} is not over until {end:%Y-%m-%dT%H:%M:%SZ}: only a past "
                "month can be closed"
            )
        existing = await statements_repo.period_closed(conn, month)
        if existing is not None:
            raise CloseRefused(
                f"{month_name(month)} is already closed (at "
                f"{existing['closed_at']:%Y-%m-%dT%H:%M:%SZ} by {existing['closed_by']}): "
                "a closed statement is final; `scheduler billing verify` checks it"
            )
        closed = await usage_repo.closed_range(conn)
        if closed is not None and closed["last"] is not None:
            expected = next_month(closed["last"]).date()
            if month != expected:
                raise CloseRefused(
                    f"months close in order: the last closed is {month_name(closed['last'])}, "
                    f"so the next to close is {month_name(expected)}, not {month_name(month)}"
                )
        rates = [rate_from_row(r) for r in await usage_repo.rates(conn)]
        rows = await window_rows(conn, month_start(month), end, None)
        by_tenant: dict[str, list[UsageRow]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant, []).append(row)
        made = [_statement(month, t, by_tenant[t], rates) for t in sorted(by_tenant)]
        await statements_repo.close_period(conn, month)
        for statement, covered in made:
            statement_id = await statements_repo.add_statement(
                conn,
                month,
                statement.tenant,
                body=statement.body,
                sha256=statement.sha256,
                totals=json.dumps(statement.totals, sort_keys=True),
                lines=statement.lines,
                usage_rows=statement.usage_rows,
                late_rows=statement.late_rows,
            )
            await statements_repo.add_statement_usage(
                conn,
                statement_id,
                statement.tenant,
                [r.job_id for r in covered],
                [r.seq for r in covered],
            )
    for statement, _ in made:
        log.info(
            "statement_closed",
            period=month_name(month),
            tenant=statement.tenant,
            sha256=statement.sha256,
            lines=statement.lines,
            usage_rows=statement.usage_rows,
            late_rows=statement.late_rows,
        )
    return [s for s, _ in made]


@dataclass(frozen=True)
class Difference:
    """Why a closed statement no longer verifies."""

    period: date
    tenant: str
    what: str

    def __str__(self) -> str:
        return f"statement {month_name(self.period)} of tenant {self.tenant}: {self.what}"


def _line_key(line: dict[str, str]) -> tuple[str, ...]:
    return (
        line["charge_period_start"],
        line["job_id"],
        line["resource"],
        line["rate_id"],
        line.get("note", ""),
    )


def _line_name(key: tuple[str, ...]) -> str:
    start, job_id, resource, rate_id, note = key
    text = f"job {job_id} {resource} at {start} (rate {rate_id})"
    return f"{text}, {note}" if note else text


def explain(stored: str, recomputed: str) -> list[str]:
    """What differs between two renderings of one statement, line by line, then totals."""
    try:
        old, new = json.loads(stored), json.loads(recomputed)
    except json.JSONDecodeError:
        return ["the stored body is not the JSON the close wrote"]
    before = {_line_key(ln): ln for ln in old.get("lines", [])}
    after = {_line_key(ln): ln for ln in new["lines"]}
    found = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            found.append(f"{_line_name(key)}: billed {before[key]['cost']}, now no such line")
        elif key not in before:
            found.append(f"{_line_name(key)}: not billed, now {after[key]['cost']}")
        else:
            fields = [
                f"{field} {before[key][field]} -> {after[key].get(field)}"
                for field in sorted(before[key])
                if before[key][field] != after[key].get(field)
            ]
            if fields:
                found.append(f"{_line_name(key)}: {', '.join(fields)}")
    if old.get("totals") != new["totals"]:
        found.append(f"totals {old.get('totals')} -> {new['totals']}")
    return found or ["the bytes differ (formatting), the lines and totals do not"]


async def verify(
    conn: Conn, month: date | None = None, tenant: str | None = None
) -> tuple[int, list[Difference]]:
    """Recompute the closed statements (all, or of ``month`` / ``tenant``) from the usage rows
    they cover and the rates, as both are now; the number checked and every difference."""
    found: list[Difference] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rates = [rate_from_row(r) for r in await usage_repo.rates(conn)]
        statements = await statements_repo.statements(conn, month, tenant)
        for s in statements:
            period, who = s["period"], s["tenant"]

            def differs(what: str, period: date = period, who: str = who) -> None:
                found.append(Difference(period, who, what))

            if digest(s["body"]) != s["sha256"]:
                differs(f"its body no longer hashes to its sha256 {s['sha256']}")
            rows = []
            for r in await statements_repo.statement_rows(conn, s["id"]):
                own = r["period_end"].astimezone(UTC).date().replace(day=1)
                rows.append(usage_row(r, billed_at=None if own == period else month_start(period)))
            covered = await statements_repo.statement_coverage(conn, s["id"])
            if len(rows) != s["usage_rows"] or covered != s["usage_rows"]:
                differs(
                    f"it priced {s['usage_rows']} usage rows; {len(rows)} of them are in "
                    "scheduler.usage now"
                )
            try:
                lines = price(rows, rates, start=month_start(period), end=next_month(period))
            except SchedulerError as exc:
                differs(f"cannot be priced any more: {exc}")
                continue
            body = render(
                lines, "json", start=month_start(period), end=next_month(period), tenant=who
            )
            if body != s["body"]:
                for what in explain(s["body"], body):
                    differs(what)
    for difference in found:
        log.warning(
            "statement_differs",
            period=month_name(difference.period),
            tenant=difference.tenant,
            what=difference.what,
        )
    return len(statements), found


def totals_text(totals: dict[str, str]) -> str:
    """``12.34 USD, 5.00 EUR`` (or ``nothing``)."""
    if not totals:
        return "nothing"
    return ", ".join(f"{Decimal(v)} {c}" for c, v in sorted(totals.items()))
