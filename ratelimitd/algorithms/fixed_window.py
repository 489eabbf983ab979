"""Fixed window: at most `requests_per_unit` per window aligned to the epoch."""

from __future__ import annotations

from ratelimitd.algorithms.base import Outcome, State
from ratelimitd.model import Limit, LimitResult


def step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    period = limit.period
    window = now - now % period
    count = int(state[1]) if state is not None and state[0] == window else 0
    capacity = limit.requests_per_unit
    allowed = count < capacity if cost == 0 else count + cost <= capacity
    if allowed:
        count += cost
    window_end = window + period
    return Outcome(
        (window, count), LimitResult(allowed, capacity - count, window_end - now), window_end
    )
