"""Token bucket: holds up to `burst` tokens, refilled at `requests_per_unit` per period.

A hit takes `cost` tokens when it can. `reset_after` is, when denied, the time until enough
tokens refill for the same cost; when allowed, the time until the bucket is full again.
A cost above `burst` never fits and is denied. The config requires `requests_per_unit >= 1`
for this algorithm, so the rate is never zero.

Under `charge: always` a hit is admitted while one token is left and takes its whole cost:
the tokens go below zero (a debt), and refill pays it off at the same rate.
"""

from __future__ import annotations

import math

from ratelimitd.algorithms.base import RETRY_MARGIN_S, TOLERANCE, Outcome, State
from ratelimitd.model import Charge, Limit, LimitResult


def step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    capacity = limit.capacity
    rate = limit.requests_per_unit / limit.period
    if state is None:
        tokens = float(capacity)
    else:
        tokens = min(float(capacity), state[0] + max(now - state[1], 0.0) * rate)
    charge_anyway = limit.charge is Charge.ALWAYS and cost > 0
    need = 1 if charge_anyway else max(cost, 1)
    # TOLERANCE: a retry exactly `reset_after` later must fit, float rounding or not
    allowed = tokens + TOLERANCE >= need
    if charge_anyway:
        tokens -= cost
    elif allowed:
        tokens = max(tokens - cost, 0.0)
    full_after = (capacity - tokens) / rate
    if allowed or need > capacity:
        reset_after = full_after
    else:
        reset_after = (need - tokens) / rate + RETRY_MARGIN_S
    return Outcome(
        (tokens, now),
        LimitResult(allowed, max(math.floor(tokens), 0), reset_after),
        now + full_after,
    )


def refund(
    state: State | None, now: float, limit: Limit, amount: int, charged_at: float
) -> State | None:
    """Puts `amount` tokens back (never past the burst); None when the bucket is full anyway."""
    if state is None:
        return None
    capacity = limit.capacity
    rate = limit.requests_per_unit / limit.period
    tokens = min(float(capacity), state[0] + max(now - state[1], 0.0) * rate)
    return (min(float(capacity), tokens + amount), now)
