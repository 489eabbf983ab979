"""The in-process counter store, used when no Redis is configured.

Every hit runs synchronously inside one event-loop step, so check-and-charge is atomic
without locks. Expired counters are reclaimed by a heap that holds at most one entry per key.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from ratelimitd.algorithms import STEPS, State
from ratelimitd.backends.base import CounterRequest, CounterResult
from ratelimitd.clock import Clock, SystemClock


class MemoryBackend:
    name = "memory"
    description = "memory (in-process, not shared between processes)"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        # key -> (state, expires_at)
        self._counters: dict[str, tuple[State, float]] = {}
        # (expiry, key), pushed when a key appears; a key found still alive is pushed again
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._counters)

    async def hit(self, requests: Sequence[CounterRequest]) -> list[CounterResult]:
        now = self._clock.now()
        self._reclaim(now)
        return [self._hit_one(request, now) for request in requests]

    def _hit_one(self, request: CounterRequest, now: float) -> CounterResult:
        counters = self._counters
        outcomes = []
        for limit in request.limits:
            key = request.key(limit)
            stored = counters.get(key)
            state = stored[0] if stored is not None and stored[1] > now else None
            outcomes.append((key, STEPS[limit.algorithm](state, now, limit, request.cost)))
        allowed = all(outcome.result.allowed for _, outcome in outcomes)
        if allowed and request.cost > 0:
            for key, outcome in outcomes:
                if key not in counters:
                    heapq.heappush(self._expiries, (outcome.expires_at, key))
                counters[key] = (outcome.state, outcome.expires_at)
        return CounterResult(allowed, tuple(outcome.result for _, outcome in outcomes))

    def _reclaim(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, key = heapq.heappop(expiries)
            stored = self._counters.get(key)
            if stored is not None and stored[1] > now:
                heapq.heappush(expiries, (stored[1], key))
            else:
                self._counters.pop(key, None)

    async def reset(self, requests: Sequence[CounterRequest]) -> int:
        now = self._clock.now()
        cleared = 0
        for request in requests:
            for limit in request.limits:
                stored = self._counters.pop(request.key(limit), None)
                if stored is not None and stored[1] > now:
                    cleared += 1
        return cleared

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._counters.clear()
        self._expiries.clear()
