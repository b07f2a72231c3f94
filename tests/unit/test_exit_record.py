"""The exit record format and the monitor's command line (no kernel involved)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from scheduler.cgroups.base import LaunchPlan
from scheduler.errors import LaunchError
from scheduler.runtime import identity
from scheduler.runtime.launcher import (
    EXIT_FILE,
    monitor_argv,
    parse_exit_record,
    read_exit_record,
)
from scheduler.runtime.spec import ExitRecord, FinalRead, LaunchSpec

GOOD = (
    "kind=exited\n"
    "exit_code=3\n"
    "signal=\n"
    "error=\n"
    "start_ns=1700000000000000000\n"
    "end_ns=1700000000500000000\n"
    "utime_us=1200\n"
    "stime_us=340\n"
    "maxrss_kb=4096\n"
)


def record(**overrides: str) -> str:
    fields = dict(line.split("=", 1) for line in GOOD.splitlines())
    fields.update(overrides)
    return "".join(f"{k}={v}\n" for k, v in fields.items())


def test_parse_exited() -> None:
    assert parse_exit_record(GOOD) == ExitRecord(
        kind="exited",
        exit_code=3,
        signal=None,
        error=None,
        start_ns=1700000000000000000,
        end_ns=1700000000500000000,
        utime_us=1200,
        stime_us=340,
        maxrss_kb=4096,
    )


def test_parse_signaled() -> None:
    rec = parse_exit_record(record(kind="signaled", exit_code="", signal="9"))
    assert (rec.kind, rec.exit_code, rec.signal, rec.error) == ("signaled", None, 9, None)


def test_parse_start_error_keeps_message_with_equals_signs() -> None:
    text = record(kind="start_error", exit_code="", error="exec: /no/such=x: No such file")
    rec = parse_exit_record(text)
    assert rec.kind == "start_error"
    assert rec.exit_code is None
    assert rec.signal is None
    assert rec.error == "exec: /no/such=x: No such file"


def test_parse_ignores_blank_lines_and_order() -> None:
    lines = GOOD.splitlines()
    text = "\n".join(reversed(lines)) + "\n\n"
    assert parse_exit_record(text) == parse_exit_record(GOOD)


def test_parse_tolerates_unknown_keys() -> None:
    assert parse_exit_record(GOOD + "future_field=1\n") == parse_exit_record(GOOD)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("garbage", id="no-equals"),
        pytest.param("\x00\x01\x02", id="binary"),
        pytest.param(GOOD.replace("maxrss_kb=4096\n", ""), id="missing-key"),
        pytest.param(GOOD + "kind=exited\n", id="duplicate-key"),
        pytest.param(record(kind="exploded"), id="unknown-kind"),
        pytest.param(record(exit_code="three"), id="non-numeric-exit-code"),
        pytest.param(record(exit_code="-1"), id="negative-exit-code"),
        pytest.param(record(exit_code="256"), id="exit-code-out-of-range"),
        pytest.param(record(exit_code=""), id="exited-without-code"),
        pytest.param(record(signal="9"), id="exited-with-signal"),
        pytest.param(record(kind="signaled", exit_code="", signal=""), id="signaled-no-signal"),
        pytest.param(record(kind="signaled", signal="9"), id="signaled-with-code"),
        pytest.param(record(kind="start_error", signal="", exit_code="1"), id="start-error-code"),
        pytest.param(record(start_ns=""), id="empty-start"),
        pytest.param(record(end_ns="12x"), id="bad-end"),
        pytest.param(record(utime_us="\u00b2"), id="non-ascii-digit"),
        pytest.param(record(stime_us=" 1"), id="space"),
    ],
)
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(LaunchError, match="bad exit record"):
        parse_exit_record(text)


def test_read_exit_record(tmp_path: Path) -> None:
    assert read_exit_record(tmp_path) is None
    (tmp_path / "exit").write_text(GOOD)
    rec = read_exit_record(tmp_path)
    assert rec is not None
    assert rec.exit_code == 3


def make_spec(
    tmp_path: Path, plan: LaunchPlan | None = None, overrides: dict[str, object] | None = None
) -> LaunchSpec:
    base: dict[str, object] = {
        "job_id": 7,
        "attempt": 1,
        "argv": ("echo", "--", "hello world"),
        "env": {"A": "1"},
        "cwd": "/srv",
        "hostname": "job-7",
        "run_dir": tmp_path / "run",
        "plan": plan or LaunchPlan(),
        "tmp_size_bytes": 1048576,
    }
    base.update(overrides or {})
    return LaunchSpec(**base)  # type: ignore[arg-type]


def test_monitor_argv_minimal(tmp_path: Path) -> None:
    argv = monitor_argv(Path("/cache/mon"), make_spec(tmp_path))
    assert argv == [
        "/cache/mon",
        "--run-dir",
        str(tmp_path / "run"),
        "--hostname",
        "job-7",
        "--cwd",
        "/srv",
        "--tmp-size",
        "1048576",
        "--",
        "echo",
        "--",
        "hello world",
    ]


def test_monitor_argv_plan_in_order(tmp_path: Path) -> None:
    plan = LaunchPlan(
        mkdirs=("/cg/pids/a", "/cg/pids/a/job-7"),
        writes=(("/cg/pids/a/job-7/pids.max", "10"), ("/cg/memory/a/x", "max")),
        procs=("/cg/pids/a/job-7/cgroup.procs", "/cg/memory/a/job-7/cgroup.procs"),
        dirs=("/cg/pids/a/job-7",),
    )
    argv = monitor_argv(Path("/m"), make_spec(tmp_path, plan))
    sep = argv.index("--")
    assert argv[9:sep] == [
        "--mkdir",
        "/cg/pids/a",
        "--mkdir",
        "/cg/pids/a/job-7",
        "--write",
        "/cg/pids/a/job-7/pids.max",
        "10",
        "--write",
        "/cg/memory/a/x",
        "max",
        "--procs",
        "/cg/pids/a/job-7/cgroup.procs",
        "--procs",
        "/cg/memory/a/job-7/cgroup.procs",
    ]
    assert argv[sep + 1 :] == ["echo", "--", "hello world"]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"argv": ()}, id="empty-argv"),
        pytest.param({"argv": ("a\x00b",)}, id="nul-in-argv"),
        pytest.param({"cwd": "/x\x00"}, id="nul-in-cwd"),
        pytest.param({"tmp_size_bytes": 0}, id="zero-tmp"),
    ],
)
def test_monitor_argv_rejects(tmp_path: Path, overrides: dict[str, object]) -> None:
    with pytest.raises(LaunchError):
        monitor_argv(Path("/m"), make_spec(tmp_path, overrides=overrides))


def test_error_with_unicode_line_separators_stays_one_field() -> None:
    # Seen with generated argv: U+0085 and U+2028 are line breaks to str.splitlines().
    text = (
        "kind=start_error\nexit_code=\nsignal=\nerror=exec: a\x85b\u2028c: No such file\n"
        "start_ns=1\nend_ns=2\nutime_us=0\nstime_us=0\nmaxrss_kb=0\n"
    )
    assert parse_exit_record(text).error == "exec: a\x85b\u2028c: No such file"


def test_counters_in_the_record_come_back_with_their_newlines() -> None:
    text = GOOD + (
        "counter.cpuacct.usage=123456\n"
        "counter.blkio bytes=8:0 Read 4096|8:0 Write 512|Total 4608\n"
        "counter.io.stat=8:0 rbytes=1 wbytes=2 rios=3 wios=4\n"
    )
    rec = parse_exit_record(text)
    assert rec.counters == {
        "cpuacct.usage": "123456",
        "blkio bytes": "8:0 Read 4096\n8:0 Write 512\nTotal 4608",
        "io.stat": "8:0 rbytes=1 wbytes=2 rios=3 wios=4",
    }
    assert parse_exit_record(GOOD).counters is None  # the monitor did not read them


def test_a_counter_named_twice_is_garbage() -> None:
    with pytest.raises(LaunchError, match=r"duplicate key 'counter\.pids\.current'"):
        parse_exit_record(GOOD + "counter.pids.current=1\ncounter.pids.current=2\n")


def test_monitor_argv_final_read_before_the_command(tmp_path: Path) -> None:
    read = FinalRead(
        counters=(("cpuacct.usage", "/cg/cpuacct/a/job-7/cpuacct.usage"),),
        gauges=(("memory.usage_in_bytes", "/cg/memory/a/job-7/memory.usage_in_bytes"),),
        empty_check="/cg/unified/a/job-7/cgroup.events",
    )
    argv = monitor_argv(Path("/m"), make_spec(tmp_path, overrides={"final_read": read}))
    sep = argv.index("--")
    assert argv[9:sep] == [
        "--counter",
        "cpuacct.usage",
        "/cg/cpuacct/a/job-7/cpuacct.usage",
        "--gauge",
        "memory.usage_in_bytes",
        "/cg/memory/a/job-7/memory.usage_in_bytes",
        "--empty-check",
        "/cg/unified/a/job-7/cgroup.events",
    ]


def test_identity_is_optional_and_kept() -> None:
    # Records of earlier versions have no identity line; this version's have one.
    assert parse_exit_record(GOOD).identity is None
    token = "0b5e7c2a-8d4e-4f7b-9a51-3c0d2e6f1a90.16384:2:3:1:1765000000123456"
    assert parse_exit_record(GOOD + f"identity={token}\n").identity == token


def test_identity_goes_right_after_the_run_dir() -> None:
    spec = LaunchSpec(
        job_id=3,
        attempt=1,
        argv=("true",),
        env={},
        cwd="/",
        hostname="h",
        run_dir=Path("/run/x/3-1"),
        plan=LaunchPlan(),
        identity="db.1:2:3:1:5",
    )
    argv = monitor_argv(Path("/bin/monitor"), spec)
    assert argv[1:5] == ["--run-dir", "/run/x/3-1", "--identity", "db.1:2:3:1:5"]
    no_identity = monitor_argv(Path("/bin/monitor"), dataclasses.replace(spec, identity=None))
    assert "--identity" not in no_identity


def test_a_monitor_that_records_and_exits_between_the_two_looks_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ended_or_running reads the record, then checks the monitor: a monitor that wrote its
    record and exited in between must be found by its record (it was recorded lost)."""
    real = identity.live_monitor_pid

    def monitor_finishes_now(run_dir: Path) -> int | None:
        (run_dir / EXIT_FILE).write_text(GOOD)  # what the monitor does just before exiting
        return real(run_dir)  # and then it is gone

    monkeypatch.setattr(identity, "live_monitor_pid", monitor_finishes_now)
    found = identity.ended_or_running(tmp_path)
    assert isinstance(found, ExitRecord)
    assert found.exit_code == 3
