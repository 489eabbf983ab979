"""The fixed-window algorithm as a pure function, on explicit times (no clock, no sleeps)."""

from __future__ import annotations

import pytest

from ratelimitd.algorithms import fixed_window
from ratelimitd.algorithms.base import State
from ratelimitd.model import Limit, Unit

MINUTE_5 = Limit(requests_per_unit=5, unit=Unit.MINUTE)
T0 = 1_700_000_040.0  # a minute boundary (divisible by 60)


def run(steps: list[tuple[float, int]], limit: Limit = MINUTE_5) -> list[tuple[bool, int, float]]:
    """Applies hits at (time, cost), committing allowed ones as a backend would."""
    state: State | None = None
    seen = []
    for now, cost in steps:
        outcome = fixed_window.step(state, now, limit, cost)
        if outcome.result.allowed and cost > 0:
            state = outcome.state
        seen.append((outcome.result.allowed, outcome.result.remaining, outcome.result.reset_after))
    return seen


def test_admits_exactly_the_limit_then_denies_until_the_window_ends() -> None:
    seen = run([(T0 + 10, 1)] * 6)
    assert [allowed for allowed, _, _ in seen] == [True] * 5 + [False]
    assert [remaining for _, remaining, _ in seen] == [4, 3, 2, 1, 0, 0]
    assert all(reset == pytest.approx(50.0) for _, _, reset in seen)


def test_the_next_window_starts_fresh() -> None:
    seen = run([(T0 + 59.9, 5), (T0 + 59.95, 1), (T0 + 60.0, 1)])
    assert seen[0][:2] == (True, 0)
    assert seen[1][:2] == (False, 0)
    assert seen[2][:2] == (True, 4)
    assert seen[2][2] == pytest.approx(60.0)


def test_a_cost_that_does_not_fit_is_denied_and_not_charged() -> None:
    seen = run([(T0, 3), (T0 + 1, 3), (T0 + 2, 2)])
    assert seen == [(True, 2, 60.0), (False, 2, 59.0), (True, 0, 58.0)]


def test_a_cost_larger_than_the_limit_is_never_admitted() -> None:
    assert run([(T0, 6)]) == [(False, 5, 60.0)]


def test_cost_zero_probes_without_consuming() -> None:
    seen = run([(T0, 0), (T0, 5), (T0, 0)])
    assert seen[0][:2] == (True, 5)
    assert seen[2][:2] == (False, 0)


def test_a_zero_limit_denies_everything() -> None:
    assert run([(T0, 1)], Limit(0, Unit.SECOND))[0][:2] == (False, 0)


def test_unit_multiplier_widens_the_window() -> None:
    fifteen_minutes = Limit(5, Unit.MINUTE, unit_multiplier=15)
    start = 1_700_000_100.0  # 1_700_000_100 % 900 == 0
    assert start % 900 == 0
    seen = run([(start + 1, 5), (start + 899, 1), (start + 900, 1)], fifteen_minutes)
    assert [allowed for allowed, _, _ in seen] == [True, False, True]
    assert seen[0][2] == pytest.approx(899.0)
