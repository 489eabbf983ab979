"""GCRA, the generic cell rate algorithm (as redis-cell and Stripe describe it): one
timestamp per key, the theoretical arrival time (TAT) of the next hit at the steady rate.

A hit of `cost` at `now` moves the TAT to `max(TAT, now) + cost * T`, where `T` is the
emission interval `period / requests_per_unit`. It is admitted when the new TAT is at most
`burst * T` ahead of `now` (`burst` defaults to `requests_per_unit`): up to `burst` at once,
then one every `T`. It admits what a token bucket of the same rate and burst admits, keeping
one number instead of two. `Retry-After` is exact: the time until the TAT has fallen back.

Under `charge: always` a hit with room for one unit is admitted and charged in full: the TAT
runs ahead past the burst (a debt), and later hits wait until it has come back.
"""

from __future__ import annotations

import math

from ratelimitd.algorithms.base import RETRY_MARGIN_S, TOLERANCE, Outcome, State
from ratelimitd.model import Charge, Limit, LimitResult

TIME_TOLERANCE_S = RETRY_MARGIN_S / 2


def step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    interval = limit.period / limit.requests_per_unit
    capacity = limit.capacity
    tat = max(state[0], now) if state is not None else now
    charge_anyway = limit.charge is Charge.ALWAYS and cost > 0
    need = 1 if charge_anyway else max(cost, 1)
    # compared in time: timestamps near 1.7e9 s are exact to about 0.24 µs, so a wait worked
    # out here (plus RETRY_MARGIN_S) must not come out a hair short
    allowed = (tat - now) + (need - capacity) * interval <= TIME_TOLERANCE_S
    if allowed or charge_anyway:
        tat += cost * interval
    ahead = tat - now  # how far the TAT runs ahead: what is in use, in time
    remaining = max(math.floor(capacity - ahead / interval + TOLERANCE), 0)
    if allowed or need > capacity:
        reset_after = max(ahead, 0.0)  # until fully restored (now, when nothing is held)
    else:
        reset_after = ahead + need * interval - capacity * interval + RETRY_MARGIN_S
    return Outcome((tat,), LimitResult(allowed, remaining, reset_after), max(tat, now))


def refund(
    state: State | None, now: float, limit: Limit, amount: int, charged_at: float
) -> State | None:
    """Moves the TAT back by `amount` hits, never behind `now` (nothing more to give)."""
    if state is None or state[0] <= now:
        return None
    interval = limit.period / limit.requests_per_unit
    return (max(state[0] - amount * interval, now),)
