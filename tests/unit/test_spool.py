"""The usage spool's pure parts (format, error kinds, conditions) and its directory on a real
filesystem (atomic segments, the bound, what a crash can leave)."""

from __future__ import annotations

import errno
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from scheduler.accounting.metrics import ServiceStats
from scheduler.accounting.periods import Counters, Mark, advance
from scheduler.accounting.spoolfile import (
    SpoolFormatError,
    UsageRow,
    columns,
    decode,
    encode,
    timestamp,
)
from scheduler.agent.health import Health
from scheduler.agent.spool import SUFFIX, SpoolFull, UsageSpool
from scheduler.config import Settings, make_settings
from scheduler.db.outage import describe, outage_kind
from scheduler.errors import ConfigError

ROW = UsageRow(
    job_id=7,
    seq=3,
    attempt=1,
    tenant="acme",
    node="n1",
    start_us=1_764_000_000_000_001,
    end_us=1_764_000_010_000_002,
    cpu_seconds=Decimal("1.000000001"),
    memory_byte_seconds=Decimal("12345.6789012345"),
    memory_peak_bytes=1 << 33,
    io_read_bytes=0,
    io_write_bytes=4096,
)


def test_rows_read_back_digit_for_digit() -> None:
    rows = [ROW, replace(ROW, seq=4, cpu_seconds=Decimal("0"))]
    assert decode(encode(rows)) == rows
    assert decode(encode([])) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode([ROW])[:-1],  # torn: no final newline
        encode([ROW])[:-20] + b"\n",
        b'{"format": "something-else", "version": 1}\n',
        encode([ROW]).replace(b'"1.000000001"', b"1.000000001"),  # a float, not exact
        encode([ROW]).replace(b'"1.000000001"', b'"-1"'),
        encode([ROW]).replace(b'"1.000000001"', b'"NaN"'),
        encode([ROW]).replace(b'"acme"', b'""'),
        encode([replace(ROW, end_us=ROW.start_us - 1)]),
        b"\xff\xfe\n",
    ],
)
def test_anything_but_a_whole_segment_is_refused(data: bytes) -> None:
    with pytest.raises(SpoolFormatError):
        decode(data)


def test_columns_are_what_the_insert_unnests() -> None:
    cols = columns([ROW])
    assert len(cols) == 12
    assert cols[0] == [7] and cols[3] == ["acme"]
    assert cols[5] == [timestamp(ROW.start_us)] and cols[7] == [Decimal("1.000000001")]
    assert (timestamp(ROW.end_us) - timestamp(ROW.start_us)).total_seconds() == 10.000001


def test_outage_kinds() -> None:
    full = asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")
    assert outage_kind(full) == "full"
    assert describe(full).startswith("database refuses writes: disk_full (SQLSTATE 53100)")
    assert outage_kind(asyncpg.exceptions.TooManyConnectionsError("too many")) == "full"
    assert outage_kind(asyncpg.exceptions.OutOfMemoryError("oom")) == "full"
    assert outage_kind(asyncpg.exceptions.ProgramLimitExceededError("limit")) == "full"
    assert outage_kind(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == "unreachable"
    assert outage_kind(TimeoutError()) == "unreachable"
    assert outage_kind(asyncpg.exceptions.AdminShutdownError("bye")) == "unreachable"
    assert outage_kind(asyncpg.exceptions.CannotConnectNowError("starting")) == "unreachable"
    assert outage_kind(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) == "unreachable"
    assert describe(TimeoutError()).startswith("database unreachable: TimeoutError")
    # A row refused on its merits is no outage: spooling it would block the spool for ever.
    assert outage_kind(asyncpg.exceptions.CheckViolationError("bad row")) is None
    assert outage_kind(asyncpg.exceptions.UniqueViolationError("dup")) is None


def test_conditions_are_published_and_listed() -> None:
    stats = ServiceStats()
    health = Health(stats)
    assert health.reasons() == [] and stats.conditions["state_disk"] == 0
    health.fail("usage", "usage rows are spooled on disk: x")
    health.fail("state_disk", "state directory full: y")
    assert health.reasons() == ["state directory full: y", "usage rows are spooled on disk: x"]
    assert stats.conditions == {
        "state_disk": 1,
        "descriptors": 0,
        "usage": 1,
        "completions": 0,
        "unkillable": 0,
    }
    health.ok("state_disk")
    health.ok("state_disk")
    assert health.reason("state_disk") is None and stats.conditions["state_disk"] == 0


def test_held_periods_coalesce_exactly() -> None:
    """The bound's policy: a period that cannot be stored keeps its mark, and the next
    stored row covers it; counters are cumulative, so the books are the same."""
    mark = Mark.fresh(1_000_000_000)
    c1 = Counters(cpu_ns=300, io_read_bytes=10, io_write_bytes=5, memory_peak_bytes=100)
    c2 = Counters(cpu_ns=700, io_read_bytes=25, io_write_bytes=9, memory_peak_bytes=150)
    p1, m1 = advance(mark, at_ns=2_000_000_000, counters=c1, memory_bytes=80)
    p2, _ = advance(m1, at_ns=3_000_000_000, counters=c2, memory_bytes=60)
    held, after = advance(mark, at_ns=3_000_000_000, counters=c2, memory_bytes=60)
    assert (held.start_ns, held.end_ns) == (p1.start_ns, p2.end_ns)
    assert held.cpu_ns == p1.cpu_ns + p2.cpu_ns
    assert held.io_read_bytes == p1.io_read_bytes + p2.io_read_bytes
    assert held.io_write_bytes == p1.io_write_bytes + p2.io_write_bytes
    assert held.memory_peak_bytes == max(p1.memory_peak_bytes, p2.memory_peak_bytes)
    assert held.seq == p1.seq and after.seq == held.seq  # no gap in the numbering


def test_spool_settings_are_validated() -> None:
    assert Settings().limits.spool_max_bytes == 64 << 20
    assert Settings().paths.spool_dir == Settings().paths.state / "spool"
    with pytest.raises(ConfigError, match="spool_max_bytes"):
        make_settings(spool_max_bytes=100)
    with pytest.raises(ConfigError, match="state_min_free_bytes"):
        make_settings(state_min_free_bytes=-1)


@pytest.mark.anyio
async def test_segments_are_whole_bounded_and_found_again(tmp_path: Path) -> None:
    stats = ServiceStats()
    spool = UsageSpool(tmp_path / "spool", 4096, stats=stats)
    spool.load()
    await spool.append([ROW])
    await spool.append([replace(ROW, seq=4), replace(ROW, seq=5)])
    assert spool.pending and spool.rows == 3
    assert (stats.spool_rows, stats.spooled_rows) == (3, 3)
    assert (
        stats.spool_bytes
        == spool.bytes
        == sum(p.stat().st_size for p in (tmp_path / "spool").glob(f"*{SUFFIX}"))
    )
    with pytest.raises(SpoolFull, match="spool_max_bytes"):
        await spool.append([replace(ROW, seq=s) for s in range(6, 60)])
    assert spool.rows == 3  # nothing half-made
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == [
        f"{1:016d}{SUFFIX}",
        f"{2:016d}{SUFFIX}",
    ]
    # What a crash can leave: a temporary file (never a row) and, at worst, a foreign file.
    (tmp_path / "spool" / f".{3:016d}.tmp").write_bytes(encode([ROW])[:10])
    (tmp_path / "spool" / f"{9:016d}{SUFFIX}").write_bytes(b"garbage")
    again = UsageSpool(tmp_path / "spool", 4096)
    again.load()
    assert again.rows == 3
    assert not (tmp_path / "spool" / f".{3:016d}.tmp").exists()
    assert (tmp_path / "spool" / "rejected" / f"{9:016d}{SUFFIX}").exists()
    await again.append([replace(ROW, seq=6)])  # numbered after what it found
    assert (tmp_path / "spool" / f"{10:016d}{SUFFIX}").exists()
