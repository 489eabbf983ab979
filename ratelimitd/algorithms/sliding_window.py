"""Sliding window: a weighted two-window counter.

The estimate is `previous * (1 - elapsed) + current`, where `elapsed` is the fraction of the
current epoch-aligned window gone by. A hit is admitted when the estimate plus its cost fits
in the limit `L`.

Error bound: in any interval of length `d ≤ P` (the period) it admits at most
`L * (1 + d / P)` hits, because the hits of the earlier window inside the interval are at most
`previous`, and the current window admits at most `L - previous * (1 - elapsed)`. A fixed
window can admit `2L` in an instant at its edge; this one admits about `L` there.
"""

from __future__ import annotations

import math

from ratelimitd.algorithms.base import RETRY_MARGIN_S, TOLERANCE, Outcome, State
from ratelimitd.model import Limit, LimitResult


def step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    period = limit.period
    window = now - now % period
    current = previous = 0.0
    if state is not None:
        if state[0] == window:
            current, previous = state[1], state[2]
        elif state[0] == window - period:
            previous = state[1]
    elapsed = (now - window) / period
    estimate = previous * (1 - elapsed) + current
    capacity = limit.requests_per_unit
    # TOLERANCE: a retry exactly `reset_after` later must fit, float rounding or not
    allowed = estimate + max(cost, 1) <= capacity + TOLERANCE
    if allowed:
        current += cost
        estimate += cost
    remaining = max(math.floor(capacity - estimate), 0)
    if allowed:
        reset_after = _restored_after(now, window, period, current, previous)
    else:
        room = capacity - max(cost, 1)
        reset_after = _admits_after(now, window, period, current, previous, room) + RETRY_MARGIN_S
    return Outcome(
        (window, current, previous),
        LimitResult(allowed, remaining, reset_after),
        window + 2 * period,
    )


def _restored_after(
    now: float, window: float, period: int, current: float, previous: float
) -> float:
    """Time until the estimate is back to zero."""
    if current > 0:
        return window + 2 * period - now
    if previous > 0:
        return window + period - now
    return 0.0


def _admits_after(
    now: float, window: float, period: int, current: float, previous: float, room: float
) -> float:
    """Time until the estimate falls to `room`, so that the same cost fits again."""
    if room < 0:  # the cost can never fit: report when the limit is fully restored
        return _restored_after(now, window, period, current, previous)
    if current <= room and previous > 0:
        # still in this window: previous * (1 - f) + current <= room
        fraction = 1 - (room - current) / previous
        return max(window + period * fraction - now, 0.0)
    # in the next window, current becomes the previous one: current * (1 - f) <= room
    fraction = 1 - room / current
    return window + period + period * fraction - now
