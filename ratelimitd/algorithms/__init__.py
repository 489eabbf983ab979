"""Rate-limit algorithms as pure functions: see `base` for the shared signature."""

from __future__ import annotations

from ratelimitd.algorithms import fixed_window, sliding_window, token_bucket
from ratelimitd.algorithms.base import Outcome, State, Step
from ratelimitd.model import Algorithm

STEPS: dict[Algorithm, Step] = {
    Algorithm.FIXED_WINDOW: fixed_window.step,
    Algorithm.SLIDING_WINDOW: sliding_window.step,
    Algorithm.TOKEN_BUCKET: token_bucket.step,
}

__all__ = ["STEPS", "Outcome", "State", "Step"]
