"""Settings of the accounting parts, and the HTTP listener's errors."""

from __future__ import annotations

import pytest

from scheduler.api.server import bind, split_addr
from scheduler.config import Settings, load_settings, make_settings
from scheduler.errors import ConfigError


def test_sample_interval_is_at_least_one_second_unless_the_floor_is_lowered() -> None:
    assert Settings().accounting.sample_interval == 10.0
    with pytest.raises(ConfigError, match=r"sample_interval must be in \[1, 3600\] s: got 0.2"):
        make_settings(sample_interval=0.2)
    assert (
        make_settings(sample_interval=0.2, sample_interval_floor=0.1).accounting.sample_interval
        == 0.2
    )
    with pytest.raises(ConfigError, match="sample_interval_floor must be in"):
        make_settings(sample_interval_floor=0.01)
    with pytest.raises(ConfigError, match="sample_interval_floor must be in"):
        make_settings(sample_interval_floor=5)


def test_metrics_jobs_from_the_environment() -> None:
    settings = load_settings(environ={"SCHEDULER_METRICS_JOBS": "0"})
    assert settings.accounting.metrics_jobs == 0
    with pytest.raises(ConfigError, match="metrics_jobs must be >= 0"):
        make_settings(metrics_jobs=-1)


def test_bind_any_port_and_a_busy_port() -> None:
    sock = bind("127.0.0.1:0")
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        with pytest.raises(ConfigError, match=r"cannot listen on http_addr '127\.0\.0\.1:"):
            bind(f"127.0.0.1:{port}")
    finally:
        sock.close()
    assert split_addr("[::1]:8420") == ("::1", 8420)


def test_bind_an_unknown_host_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"http_addr 'no-such-host\.invalid:1'"):
        bind("no-such-host.invalid:1")
