"""The Prometheus exposition of a snapshot: names, labels, caps, and promtool's verdict."""

from __future__ import annotations

import shutil
import subprocess
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.accounting.metrics import (
    JobSeries,
    ServiceStats,
    Snapshot,
    monotonic,
)
from scheduler.api.metrics import render_metrics
from scheduler.cgroups.base import Usage
from scheduler.cgroups.counters import Sample


def snapshot() -> Snapshot:
    return Snapshot(
        tenants={
            "acme": Usage(
                cpu_user_ns=1_500_000_000,
                cpu_system_ns=250_000_000,
                memory_current_bytes=4096,
                io_read_bytes=10,
                io_write_bytes=20,
            )
        },
        jobs=tuple(
            JobSeries(i, "acme", Sample(cpu_ns=i * 1_000_000, memory_current_bytes=i))
            for i in (3, 1, 2)
        ),
        job_states={("acme", "queued"): 4, ("acme", "running"): 3, ("default", "succeeded"): 9},
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_has_the_contract_names_and_labels() -> None:
    stats = ServiceStats()
    stats.attempt_finished("acme", "succeeded", 0.012)
    stats.attempt_finished("acme", "failed", None)
    stats.database_errors = 2
    stats.sample_duration.observe(0.003)
    # The tenant counters are the bill's (accounting/ledger.py), not the cgroup's.
    stats.billed.add("acme", Decimal("1.75"), 10, 20, Decimal("0.8"))
    text = render_metrics(snapshot(), stats, job_limit=10).decode()
    got = samples(text)
    assert (
        got[("scheduler_tenant_cpu_seconds_total", (("mode", "user"), ("tenant", "acme")))] == 1.4
    )
    assert (
        got[("scheduler_tenant_cpu_seconds_total", (("mode", "system"), ("tenant", "acme")))]
        == 0.35
    )
    assert got[("scheduler_tenant_memory_bytes", (("tenant", "acme"),))] == 4096
    assert (
        got[("scheduler_tenant_io_bytes_total", (("direction", "write"), ("tenant", "acme")))] == 20
    )
    assert got[("scheduler_tenant_jobs", (("state", "queued"), ("tenant", "acme")))] == 4
    assert got[("scheduler_queue_depth", (("tenant", "acme"),))] == 4
    assert got[("scheduler_queue_depth", (("tenant", "default"),))] == 0
    assert got[("scheduler_job_cpu_seconds_total", (("job_id", "2"), ("tenant", "acme")))] == 0.002
    assert got[("scheduler_job_memory_bytes", (("job_id", "3"), ("tenant", "acme")))] == 3
    assert (
        "scheduler_job_io_bytes_total",
        (("direction", "read"), ("job_id", "1"), ("tenant", "acme")),
    ) in got
    assert got[("scheduler_jobs_finished_total", (("state", "succeeded"), ("tenant", "acme")))] == 1
    assert got[("scheduler_database_errors_total", ())] == 2
    assert got[("scheduler_dispatch_latency_seconds_count", ())] == 1
    assert got[("scheduler_dispatch_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("scheduler_dispatch_latency_seconds_bucket", (("le", "0.01"),))] == 0
    assert got[("scheduler_sample_duration_seconds_sum", ())] == 0.003


def test_per_job_series_are_capped_and_can_be_switched_off() -> None:
    capped = samples(render_metrics(snapshot(), ServiceStats(), job_limit=2).decode())
    jobs = {dict(k[1])["job_id"] for k in capped if k[0] == "scheduler_job_memory_bytes"}
    assert jobs == {"1", "2"}  # the lowest ids, so the set is stable between scrapes
    off = render_metrics(snapshot(), ServiceStats(), job_limit=0).decode()
    assert "scheduler_job_" not in off
    assert "scheduler_tenant_cpu_seconds_total" in off


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_finds_nothing_to_complain_about() -> None:
    stats = ServiceStats()
    stats.attempt_finished("acme", "succeeded", 0.5)
    text = render_metrics(snapshot(), stats, job_limit=10)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_tenant_counters_never_go_backwards() -> None:
    high = Usage(cpu_ns=10, cpu_user_ns=7, cpu_system_ns=3, io_read_bytes=5, memory_current_bytes=9)
    low = Usage(cpu_ns=4, cpu_user_ns=2, cpu_system_ns=2, io_read_bytes=1, memory_current_bytes=1)
    held = monotonic(high, low)
    assert (held.cpu_ns, held.cpu_user_ns, held.io_read_bytes) == (10, 7, 5)
    assert held.memory_current_bytes == 1  # a gauge follows the kernel
    assert monotonic(None, low) == low


def test_histogram_buckets_are_cumulative_and_a_copy_holds_still() -> None:
    stats = ServiceStats()
    for v in (0.003, 0.005, 0.02, 700.0):
        stats.sample_duration.observe(v)
    stats.database_errors += 1
    copy = stats.copy()
    stats.sample_duration.observe(0.0001)
    stats.database_errors += 1
    got = samples(render_metrics(snapshot(), copy, job_limit=0).decode())
    bucket = "scheduler_sample_duration_seconds_bucket"
    assert got[(bucket, (("le", "0.0025"),))] == 0
    assert got[(bucket, (("le", "0.005"),))] == 2
    assert got[(bucket, (("le", "0.025"),))] == 3
    assert got[(bucket, (("le", "+Inf"),))] == 4
    assert got[("scheduler_sample_duration_seconds_count", ())] == 4
    assert got[("scheduler_sample_duration_seconds_sum", ())] == 700.028
    assert got[("scheduler_database_errors_total", ())] == 1
    assert stats.database_errors == 2
    text = render_metrics(snapshot(), stats, job_limit=0).decode()
    assert "_created" not in text  # the exposition the SPEC names, nothing more
    assert samples(text)[("scheduler_sample_duration_seconds_count", ())] == 5
