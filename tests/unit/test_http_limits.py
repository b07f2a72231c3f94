"""The HTTP limits' settings, the Range parser, the connection cap against the descriptor
limit, and a full descriptor table told apart from a full disk."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scheduler.agent.descriptors import http_connection_cap
from scheduler.api.logs import parse_range
from scheduler.api.problems import Problem
from scheduler.config import load_settings
from scheduler.errors import ConfigError


def test_http_settings_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "SCHEDULER_API_DB_CONNECTIONS": "3",
            "SCHEDULER_HTTP_MAX_CONNECTIONS": "50",
            "SCHEDULER_HTTP_HEADER_TIMEOUT_SECONDS": "2.5",
            "SCHEDULER_HTTP_BODY_TIMEOUT_SECONDS": "20",
            "SCHEDULER_HTTP_KEEPALIVE_TIMEOUT_SECONDS": "4",
            "SCHEDULER_METRICS_TOKEN": "a-long-enough-token",
        }
    )
    assert (settings.db.api_connections, settings.http.max_connections) == (3, 50)
    assert settings.http.header_timeout_seconds == 2.5
    assert settings.http.body_timeout_seconds == 20
    assert settings.http.keepalive_timeout_seconds == 4
    assert settings.http.metrics_token == "a-long-enough-token"
    assert load_settings(environ={}).http.metrics_token is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCHEDULER_API_DB_CONNECTIONS": "0"}, "api_db_connections must be in"),
        ({"SCHEDULER_API_DB_CONNECTIONS": "many"}, "SCHEDULER_API_DB_CONNECTIONS"),
        ({"SCHEDULER_HTTP_MAX_CONNECTIONS": "0"}, "http_max_connections must be in"),
        ({"SCHEDULER_HTTP_HEADER_TIMEOUT_SECONDS": "0"}, "http_header_timeout_seconds"),
        ({"SCHEDULER_HTTP_BODY_TIMEOUT_SECONDS": "99999"}, "http_body_timeout_seconds"),
        ({"SCHEDULER_HTTP_KEEPALIVE_TIMEOUT_SECONDS": "0.5"}, "http_keepalive_timeout_seconds"),
        ({"SCHEDULER_METRICS_TOKEN": "short"}, "metrics_token must be at least 16"),
        ({"SCHEDULER_METRICS_TOKEN": "has spaces in the token"}, "without spaces"),
        ({"SCHEDULER_METRICS_TOKEN": "token\nwith-a-newline"}, "printable ASCII"),
    ],
)
def test_bad_http_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


@pytest.mark.parametrize(
    ("header", "size", "window"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-1000", 100, (0, 100)),
        ("bytes=95-1000", 100, (95, 100)),
        ("bytes=0-0", 100, (0, 1)),
        ("bytes=5-3", 100, None),  # invalid: ignored
        ("bytes=0-1,5-6", 100, None),  # several: ignored
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=" + "9" * 30 + "-", 100, None),  # absurd: ignored
    ],
)
def test_parse_range(header: str | None, size: int, window: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == window


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_unsatisfiable_ranges_are_416(header: str, size: int) -> None:
    with pytest.raises(Problem) as caught:
        parse_range(header, size)
    assert caught.value.status == 416
    assert caught.value.headers["Content-Range"] == f"bytes */{size}"


def test_http_connections_get_at_most_half_the_descriptors() -> None:
    assert http_connection_cap(1000, 1_048_576) == 1000
    assert http_connection_cap(1000, 1024) == 512
    assert http_connection_cap(1000, 20) == 16


def test_a_full_descriptor_table_is_not_a_full_disk(tmp_path: Path) -> None:
    # In a child process: it fills its own descriptor table, never this one's.
    script = textwrap.dedent(
        f"""
        import os, resource, anyio
        from pathlib import Path
        from scheduler.agent.health import Health
        from scheduler.agent.statedisk import StateDisk

        async def main():
            health = Health()
            disk = StateDisk(
                (Path({str(tmp_path)!r}),), min_free_bytes=0, interval=1, health=health
            )
            assert await disk.check() is None
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            held = []
            try:
                while True:
                    held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            await disk.check()
            found = (health.reason("state_disk"), health.reason("descriptors"), disk.blocked())
            print("RESULT", " | ".join(map(str, found)))
            for fd in held:
                os.close(fd)
            assert await disk.check() is None and disk.blocked() is None

        anyio.run(main)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    disk, descriptors, blocked = result.removeprefix("RESULT ").split(" | ")
    assert disk == "None", out
    assert descriptors.startswith("out of file descriptors (not a disk problem)"), out
    assert blocked == descriptors  # no job is started meanwhile: a launch opens files
