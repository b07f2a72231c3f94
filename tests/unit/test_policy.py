"""The pure policy rules: fair-share order, usage decay, node capacity."""

from __future__ import annotations

from collections import Counter

import pytest

from scheduler.errors import ConfigError
from scheduler.policy.admission import Capacity, detect_capacity
from scheduler.policy.fairshare import HALF_LIFE_SECONDS, Queued, decayed, order, share_key


def test_usage_halves_every_half_life() -> None:
    assert decayed(100, 0) == 100
    assert decayed(100, HALF_LIFE_SECONDS) == pytest.approx(50)
    assert decayed(100, 3 * HALF_LIFE_SECONDS) == pytest.approx(12.5)
    assert decayed(100, -5) == 100  # clock skew never makes usage grow
    with pytest.raises(ValueError, match="half_life"):
        decayed(1, 1, half_life=0)


def test_share_key_divides_by_weight() -> None:
    assert share_key(30, 0.5, 1, weight=3) == pytest.approx(share_key(30, 0.5, 1, weight=1) / 3)
    with pytest.raises(ValueError, match="weight"):
        share_key(0, 0, 1, weight=0)


def test_weights_one_to_three_take_slots_one_to_three() -> None:
    jobs = [Queued(i, "a", 0.5) for i in range(1, 50)] + [
        Queued(i, "b", 0.5) for i in range(50, 100)
    ]
    first8 = order(jobs, weights={"a": 1, "b": 3})[:8]
    assert Counter(j.tenant for j in first8) == {"a": 2, "b": 6}


def test_one_job_is_not_starved_by_ten_thousand() -> None:
    jobs = [Queued(i, "big", 1) for i in range(1, 10_001)] + [Queued(10_001, "small", 1)]
    assert [j.id for j in order(jobs, weights={"big": 1, "small": 1})[:2]] == [1, 10_001]


def test_priority_then_age_inside_a_tenant_and_usage_across() -> None:
    jobs = [Queued(1, "a", 1, 0), Queued(2, "a", 1, 9), Queued(3, "b", 1, 0)]
    ordered = order(jobs, weights={"a": 1, "b": 1}, recent={"b": 1000.0})
    assert [j.id for j in ordered] == [2, 1, 3]
    ordered = order(jobs, weights={"a": 1, "b": 1}, running={"a": 4.0})
    assert ordered[0].id == 3


def test_capacity_is_detected_or_configured() -> None:
    detected = detect_capacity()
    assert detected.cpu >= 1
    assert detected.memory_bytes > 64 * 1024 * 1024
    assert detect_capacity(3.5, 1024) == Capacity(3.5, 1024)
    with pytest.raises(ConfigError, match="cpu capacity"):
        Capacity(0, 1)


def test_a_childs_weight_cannot_take_more_than_its_parents_share() -> None:
    # alpha's only child asks for weight 10000 against beta's 100: it still gets alpha's half.
    jobs = [Queued(i, "beta", 1.0) for i in range(1, 9)]
    jobs += [Queued(i, "alpha-kid", 1.0) for i in range(9, 17)]
    weights = {"alpha": 100, "beta": 100, "alpha-kid": 10000}
    ordered = order(jobs, weights=weights, parents={"alpha-kid": "alpha"})
    first = [j.tenant for j in ordered[:8]]
    assert first.count("alpha-kid") == 4
    # Flat, the same weights hand the child everything first.
    flat = order(jobs, weights=weights)
    assert [j.tenant for j in flat[:8]] == ["alpha-kid"] * 8


def test_a_subtree_is_split_among_its_children_by_their_weights() -> None:
    # alpha (100) and beta (100) at the root; alpha's children 1:3. Over 16 slots: beta 8,
    # alpha's children 2 and 6.
    jobs = [
        Queued(i, t, 1.0)
        for t in ("beta", "a1", "a3")
        for i in range(len(t) * 100, len(t) * 100 + 20)
    ]
    jobs = [Queued(n, j.tenant, 1.0) for n, j in enumerate(jobs, start=1)]
    weights = {"alpha": 100, "beta": 100, "a1": 1, "a3": 3}
    ordered = order(jobs, weights=weights, parents={"a1": "alpha", "a3": "alpha"})
    first = [j.tenant for j in ordered[:16]]
    assert (first.count("beta"), first.count("a1"), first.count("a3")) == (8, 2, 6)
