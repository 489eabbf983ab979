"""The one signature every algorithm has.

`step(state, now, limit, cost) -> Outcome`: given the stored state of one counter (or None),
the time, the limit and the cost of this hit, say whether the hit is allowed and what state to
store if it is committed. Nothing is stored here: the backend commits `outcome.state` only when
every limit of a descriptor allows the hit, so a denied hit costs nothing. Each algorithm has a
Lua twin in `ratelimitd/backends/redis/lua/` with the same arithmetic.

A `cost` of 0 is a probe: it consumes nothing and is over limit when nothing is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ratelimitd.model import Limit, LimitResult

State = tuple[float, ...]

# Slack in comparisons of fractional amounts (tokens, weighted estimates): time differences
# like (T + 0.1) - T come out a hair short, which must not turn an admit into a denial.
TOLERANCE = 1e-9
# Added to the wait a denial reports: timestamps near 1.7e9 s are only exact to ~0.24 µs, so a
# retry at exactly the computed instant could land a hair early and be refused again.
RETRY_MARGIN_S = 1e-6


class Outcome(NamedTuple):
    state: State
    result: LimitResult
    expires_at: float


Step = Callable[[State | None, float, Limit, int], Outcome]
