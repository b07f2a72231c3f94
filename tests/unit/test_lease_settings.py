"""Lease settings are validated: a lease shorter than two heartbeats would expire between them."""

from __future__ import annotations

import pytest

from scheduler.config import Settings, load_settings, make_settings
from scheduler.errors import ConfigError


def test_lease_defaults() -> None:
    settings = Settings()
    assert (settings.node.lease_seconds, settings.node.heartbeat_seconds) == (15.0, 5.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lease_seconds": 1.0, "heartbeat_seconds": 0.6}, "at least twice heartbeat_seconds"),
        ({"heartbeat_seconds": 0.01}, "heartbeat_seconds must be in"),
        ({"lease_grace_seconds": -1.0}, "lease_grace_seconds must be in"),
    ],
)
def test_bad_lease_settings_are_refused(values: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_settings(**values)


def test_lease_settings_come_from_the_environment() -> None:
    settings = load_settings(
        environ={"SCHEDULER_LEASE_SECONDS": "2", "SCHEDULER_HEARTBEAT_SECONDS": "0.5"}
    )
    assert (settings.node.lease_seconds, settings.node.heartbeat_seconds) == (2.0, 0.5)
