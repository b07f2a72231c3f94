"""Sweep times a tenant cannot predict: each gap is drawn anew, 50-150% of the interval."""

from __future__ import annotations

import statistics
from typing import Any, cast

from scheduler.agent.sampler import Sampler


def test_gaps_between_sweeps_vary_around_the_interval() -> None:
    # The gap needs neither a database nor cgroups.
    sampler = Sampler(cast(Any, None), cast(Any, None), node="n", interval=10.0)
    gaps = [sampler.next_gap() for _ in range(2000)]
    assert min(gaps) >= 5.0 and max(gaps) <= 15.0
    assert len(set(gaps)) > 1900  # not a grid: practically every gap differs
    assert 9.7 < statistics.mean(gaps) < 10.3  # the mean period is the interval
    assert statistics.pstdev(gaps) > 2.5  # spread over the whole range (uniform: 2.89)
