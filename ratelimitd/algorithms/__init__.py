"""Rate-limit algorithms as pure functions: see `base` for the shared signature."""

from __future__ import annotations

from collections.abc import Callable

from ratelimitd.algorithms import fixed_window, gcra, sliding_window, token_bucket
from ratelimitd.algorithms.base import Outcome, State, Step
from ratelimitd.model import Algorithm, Limit

STEPS: dict[Algorithm, Step] = {
    Algorithm.FIXED_WINDOW: fixed_window.step,
    Algorithm.SLIDING_WINDOW: sliding_window.step,
    Algorithm.TOKEN_BUCKET: token_bucket.step,
    Algorithm.GCRA: gcra.step,
}

Refund = Callable[[State | None, float, Limit, int, float], State | None]
"""`refund(state, now, limit, amount, charged_at)`: the state with `amount` given back to
what was charged at `charged_at`, or None when nothing changes (reservations.py)."""

REFUNDS: dict[Algorithm, Refund] = {
    Algorithm.FIXED_WINDOW: fixed_window.refund,
    Algorithm.SLIDING_WINDOW: sliding_window.refund,
    Algorithm.TOKEN_BUCKET: token_bucket.refund,
    Algorithm.GCRA: gcra.refund,
}

__all__ = ["REFUNDS", "STEPS", "Outcome", "Refund", "State", "Step"]
