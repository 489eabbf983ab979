"""Sliding window: a weighted two-window counter.

The estimate is `previous * (1 - elapsed) + current`, where `elapsed` is the fraction of the
current epoch-aligned window gone by. A hit is admitted when the estimate plus its cost fits
in the limit `L`.

Error bound: in any interval of length `d ≤ P` (the period) it admits at most
`L * (1 + d / P)` hits, because the hits of the earlier window inside the interval are at most
`previous`, and the current window admits at most `L - previous * (1 - elapsed)`. A fixed
window can admit `2L` in an instant at its edge; this one admits about `L` there.

Under `charge: always` a hit is admitted while one unit fits and counts in full, so `current`
may pass `L` (a debt). At a window end, at most `L` of it becomes `previous` and the rest is
carried into the new window's count: the estimate runs on without a jump and falls by `L` a
period, as a count within the limit always did.
"""

from __future__ import annotations

import math

from ratelimitd.algorithms.base import RETRY_MARGIN_S, TOLERANCE, Outcome, State
from ratelimitd.model import Charge, Limit, LimitResult


def step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    period = limit.period
    window = now - now % period
    capacity = limit.requests_per_unit
    if state is not None and state[0] == window:  # the usual case: this window's counts
        current, previous = state[1], state[2]
    else:
        current, previous = _carried(state, window, period, capacity)
    elapsed = (now - window) / period
    estimate = previous * (1 - elapsed) + current
    charge_anyway = limit.charge is Charge.ALWAYS and cost > 0
    need = 1 if charge_anyway else max(cost, 1)
    # TOLERANCE: a retry exactly `reset_after` later must fit, float rounding or not
    allowed = estimate + need <= capacity + TOLERANCE
    if allowed or charge_anyway:
        current += cost
        estimate += cost
    remaining = max(math.floor(capacity - estimate), 0)
    if allowed:
        reset_after = _restored_after(now, window, period, current, previous, capacity)
    else:
        room = capacity - need
        reset_after = (
            _admits_after(now, window, period, current, previous, room, capacity) + RETRY_MARGIN_S
        )
    return Outcome(
        (window, current, previous),
        LimitResult(allowed, remaining, reset_after),
        window + (2 if current <= capacity else _periods_to_pay(current, capacity) + 1) * period,
    )


def _carried(state: State | None, window: float, period: int, capacity: int) -> tuple[float, float]:
    """(current, previous) at `window`. Each window end moves up to `capacity` of the count
    into `previous` and carries the rest (a debt) as the new count."""
    if state is None:
        return 0.0, 0.0
    ends = round((window - state[0]) / period)
    if ends == 0:
        return state[1], state[2]
    if ends < 0:
        return 0.0, 0.0
    count = state[1]
    return max(count - ends * capacity, 0.0), min(max(count - (ends - 1) * capacity, 0.0), capacity)


def _periods_to_pay(current: float, capacity: int) -> int:
    """Window ends until `current` has all become `previous` (at least one)."""
    return max(math.ceil(current / capacity), 1) if capacity else 1


def _restored_after(
    now: float, window: float, period: int, current: float, previous: float, capacity: int
) -> float:
    """Time until the estimate is back to zero."""
    if current > 0:
        return window + (_periods_to_pay(current, capacity) + 1) * period - now
    if previous > 0:
        return window + period - now
    return 0.0


def _admits_after(
    now: float,
    window: float,
    period: int,
    current: float,
    previous: float,
    room: float,
    capacity: int,
) -> float:
    """Time until the estimate falls to `room`, so that the same cost fits again."""
    if room < 0:  # the cost can never fit: report when the limit is fully restored
        return _restored_after(now, window, period, current, previous, capacity)
    if current <= room and previous > 0:
        # still in this window: previous * (1 - f) + current <= room
        fraction = 1 - (room - current) / previous
        return max(window + period * fraction - now, 0.0)
    # k window ends on, the count has become previous (up to capacity) and a carried rest;
    # the first k whose rest fits in room, then the point in that window where the estimate does
    ends = max(1, math.ceil((current - room) / capacity))
    rest = max(current - ends * capacity, 0.0)
    moved = min(max(current - (ends - 1) * capacity, 0.0), capacity)
    fraction = 1 - (room - rest) / moved if moved > 0 else 0.0
    return window + ends * period + period * max(fraction, 0.0) - now


def refund(
    state: State | None, now: float, limit: Limit, amount: int, charged_at: float
) -> State | None:
    """Gives `amount` back to the count it was charged to, while that count is still the
    current or the previous window's; None when there is nothing to do."""
    if state is None:
        return None
    period = limit.period
    window = now - now % period
    charged = charged_at - charged_at % period
    stored, current, previous = state[0], state[1], state[2]
    if stored == charged and stored in (window, window - period):
        return (stored, max(current - amount, 0.0), previous)
    if stored == window and charged == window - period:
        return (stored, current, max(previous - amount, 0.0))
    return None
