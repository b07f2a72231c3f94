"""The one retry delay (scheduler/backoff.py): bounds, growth, reset, and no lockstep."""

from __future__ import annotations

import random
import statistics

import pytest

from scheduler.backoff import Backoff


def test_delays_stay_between_first_and_cap_and_reach_the_cap() -> None:
    backoff = Backoff(0.1, 5.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(200)]
    assert all(0.1 <= d <= 5.0 for d in delays)
    assert max(delays) == 5.0  # capped, not beyond
    assert backoff.failures == 200
    # It grows: the first retries are short, later ones mostly near the cap.
    assert delays[0] <= 0.3
    assert statistics.median(delays[50:]) > 2.0


def test_reset_starts_again_from_first() -> None:
    backoff = Backoff(0.1, 5.0, rng=random.Random(2))
    for _ in range(30):
        backoff.next()
    backoff.reset()
    assert backoff.failures == 0
    assert 0.1 <= backoff.next() <= 0.3


def test_agents_failing_together_do_not_retry_in_lockstep() -> None:
    """Twenty agents that lost the database at one instant: their retry instants differ
    from the first retry on (plain doubling gives every agent the same ones)."""
    agents = [Backoff(0.1, 5.0) for _ in range(20)]  # each seeded by the OS, as deployed
    instants = [0.0] * len(agents)
    for _ in range(8):
        instants = [at + a.next() for at, a in zip(instants, agents, strict=True)]
        assert len(set(instants)) == len(instants)
        assert max(instants) - min(instants) > 0.01


def test_jitter_spreads_the_delays_of_one_step() -> None:
    """Many first retries are spread over [first, 3 * first], not bunched."""
    rng = random.Random(3)
    firsts = [Backoff(1.0, 30.0, rng=rng).next() for _ in range(2000)]
    assert 1.0 <= min(firsts) < 1.1 and 2.9 < max(firsts) <= 3.0
    assert 1.9 < statistics.mean(firsts) < 2.1


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_are_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < first <= cap"):
        Backoff(first, cap)
