"""What every algorithm promises, checked on random traffic (hypothesis), pure Python."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimitd.algorithms import STEPS
from ratelimitd.algorithms.base import State
from ratelimitd.model import Algorithm, Limit, Unit

T0 = 1_700_000_100.0

# (gap since the previous hit in seconds, cost)
traffic = st.lists(
    st.tuples(st.floats(min_value=0, max_value=30, allow_nan=False), st.integers(0, 6)),
    min_size=1,
    max_size=200,
)


def run(limit: Limit, hits: list[tuple[float, int]]) -> tuple[list[tuple[float, int]], list[State]]:
    """Feeds `hits` through the algorithm as a backend would; returns admitted (time, cost)."""
    step = STEPS[limit.algorithm]
    state: State | None = None
    now = T0
    admitted = []
    states = []
    for gap, cost in hits:
        now += gap
        outcome = step(state, now, limit, cost)
        if outcome.result.allowed and cost > 0:
            state = outcome.state
            admitted.append((now, cost))
            states.append(state)
        assert outcome.result.remaining >= 0
        assert outcome.result.reset_after >= 0
    return admitted, states


@settings(max_examples=300)
@given(traffic, st.integers(1, 10))
def test_fixed_window_never_admits_more_than_the_limit_per_window(
    hits: list[tuple[float, int]], requests: int
) -> None:
    limit = Limit(requests, Unit.MINUTE)
    admitted, _ = run(limit, hits)
    per_window: dict[float, int] = {}
    for when, cost in admitted:
        window = when - when % 60
        per_window[window] = per_window.get(window, 0) + cost
    assert all(total <= requests for total in per_window.values())


@settings(max_examples=300)
@given(traffic, st.integers(1, 10))
def test_sliding_window_stays_within_its_error_bound(
    hits: list[tuple[float, int]], requests: int
) -> None:
    """Any interval of length d <= P admits at most L * (1 + d / P); each window at most L."""
    period = 60
    limit = Limit(requests, Unit.MINUTE, algorithm=Algorithm.SLIDING_WINDOW)
    admitted, _ = run(limit, hits)
    for i, (start, _) in enumerate(admitted):
        total = 0
        for when, cost in admitted[i:]:
            span = when - start
            if span > period:
                break
            total += cost
            assert total <= requests * (1 + span / period) + 1e-9
    per_window: dict[float, int] = {}
    for when, cost in admitted:
        window = when - when % period
        per_window[window] = per_window.get(window, 0) + cost
    assert all(total <= requests for total in per_window.values())


@settings(max_examples=300)
@given(traffic, st.integers(1, 10), st.integers(1, 30))
def test_token_bucket_never_exceeds_burst_plus_refill(
    hits: list[tuple[float, int]], requests: int, burst: int
) -> None:
    limit = Limit(requests, Unit.MINUTE, algorithm=Algorithm.TOKEN_BUCKET, burst=burst)
    rate = requests / 60
    admitted, states = run(limit, hits)
    assert all(0 <= state[0] <= burst for state in states)
    assert_at_most_burst_plus_rate(admitted, burst, rate)


@settings(max_examples=300)
@given(traffic, st.integers(1, 10), st.integers(1, 30))
def test_gcra_admits_exactly_what_the_token_bucket_admits(
    hits: list[tuple[float, int]], requests: int, burst: int
) -> None:
    """Same rate, same burst: the same hits admitted (and so the bucket's bound holds)."""
    bucket = Limit(requests, Unit.MINUTE, algorithm=Algorithm.TOKEN_BUCKET, burst=burst)
    gcra = Limit(requests, Unit.MINUTE, algorithm=Algorithm.GCRA, burst=burst)
    assert run(gcra, hits)[0] == run(bucket, hits)[0]
    assert_at_most_burst_plus_rate(run(gcra, hits)[0], burst, requests / 60)


def assert_at_most_burst_plus_rate(
    admitted: list[tuple[float, int]], burst: int, rate: float
) -> None:
    for i, (start, _) in enumerate(admitted):
        total = 0
        for when, cost in admitted[i:]:
            total += cost
            assert total <= burst + rate * (when - start) + 1e-6


@given(st.sampled_from(list(Algorithm)), st.integers(1, 10), st.integers(0, 100))
def test_a_denied_retry_after_reset_is_admitted(
    algorithm: Algorithm, requests: int, cost: int
) -> None:
    """`reset_after` on a denial is when the same cost fits again (for a cost that can ever fit)."""
    limit = Limit(requests, Unit.MINUTE, algorithm=algorithm)
    step = STEPS[algorithm]
    state: State | None = None
    now = T0 + 7.25
    for _ in range(50):  # spend everything
        outcome = step(state, now, limit, 1)
        if outcome.result.allowed:
            state = outcome.state
    cost = max(1, min(cost, requests))
    denied = step(state, now, limit, cost)
    assert not denied.result.allowed
    wait = denied.result.reset_after
    assert wait > 0 and math.isfinite(wait)
    later = step(state, now + wait, limit, cost)  # exactly then, not a hair later
    assert later.result.allowed
