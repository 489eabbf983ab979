"""The in-process counter store, used when no Redis is configured.

Every hit runs synchronously inside one event-loop step, so check-and-charge is atomic
without locks.

Memory is kept small because a replica may hold millions of live counters (1,000,000 fit in
about 300 MB): each counter is one flat tuple `(expires_at, *state)`; the floats that many
counters share (window starts and ends) are interned; and expiry is tracked in one-second
buckets that hold only a reference per counter. A bucket is swept when its second has passed;
counters found still alive (a token bucket's expiry moves on with each hit) go to their
current bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ratelimitd.algorithms import REFUNDS, STEPS
from ratelimitd.backends.base import CounterRequest, CounterResult, LeaseRequest, LeaseResult
from ratelimitd.backends.lease_table import LeaseTable
from ratelimitd.clock import Clock, SystemClock
from ratelimitd.model import Charge

Entry = tuple[float, ...]  # (expires_at, *state)


MAX_VALUES = 100_000  # reservation records held at once (kv_set)


class MemoryBackend:
    name = "memory"
    description = "memory (in-process, not shared between processes)"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._counters: dict[str, Entry] = {}
        self._buckets: dict[int, list[str]] = {}  # whole second of expiry -> keys
        self._next_sweep = math.inf
        self._floats: dict[float, float] = {}
        self._values: dict[str, tuple[float, str]] = {}  # key -> (expires at, value)
        self._leases = LeaseTable()

    def __len__(self) -> int:
        return len(self._counters)

    async def hit(self, requests: Sequence[CounterRequest]) -> list[CounterResult]:
        now = self._clock.now()
        if now >= self._next_sweep:
            self._reclaim(now)
        if len(requests) == 1:  # the usual call: denied, it committed nothing to roll back
            return [self._hit_one(requests[0], now, None)]
        before: dict[str, Entry | None] = {}  # what if_fits commits changed, as it was
        results = [self._hit_one(request, now, before) for request in requests]
        binding = zip(requests, results, strict=True)
        if before and not all(result.allowed for request, result in binding if request.binding):
            self._roll_back(before)  # one descriptor denied: the call charges nothing
        return results

    def _roll_back(self, before: dict[str, Entry | None]) -> None:
        for key, entry in before.items():
            if entry is None:
                self._counters.pop(key, None)
            else:
                self._counters[key] = entry

    def _hit_one(
        self, request: CounterRequest, now: float, before: dict[str, Entry | None] | None
    ) -> CounterResult:
        counters = self._counters
        outcomes = []
        for limit in request.limits:
            key = request.key(limit)
            entry = counters.get(key)
            state = entry[1:] if entry is not None and entry[0] > now else None
            outcomes.append((key, STEPS[limit.algorithm](state, now, limit, request.cost)))
        allowed = all(outcome.result.allowed for _, outcome in outcomes)
        if request.cost > 0:
            intern = self._intern
            for (key, outcome), limit in zip(outcomes, request.limits, strict=True):
                if not (allowed or limit.charge is Charge.ALWAYS):
                    continue  # a denied descriptor charges its `if_fits` limits nothing
                entry = counters.get(key)
                if before is not None and limit.charge is Charge.IF_FITS and key not in before:
                    before[key] = entry
                if entry is None or math.ceil(entry[0]) != math.ceil(outcome.expires_at):
                    self._schedule(key, outcome.expires_at)
                counters[key] = (intern(outcome.expires_at), *map(intern, outcome.state))
        return CounterResult(allowed, tuple(outcome.result for _, outcome in outcomes))

    def _intern(self, number: float) -> float:
        return self._floats.setdefault(number, number)

    def _schedule(self, key: str, expires_at: float) -> None:
        second = math.ceil(expires_at)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            self._next_sweep = min(self._next_sweep, second)
        bucket.append(key)

    def _reclaim(self, now: float) -> None:
        counters = self._counters
        for second in sorted(s for s in self._buckets if s <= now):
            for key in self._buckets.pop(second):
                entry = counters.get(key)
                if entry is None:
                    continue
                if entry[0] <= now:
                    del counters[key]
                elif math.ceil(entry[0]) == second:  # still due here, a fraction of a second on
                    self._schedule(key, entry[0])
                # else: a later bucket already holds it
        self._next_sweep = min(self._buckets, default=math.inf)
        if len(self._floats) > 4 * len(counters) + 1024:  # drop interned floats no one uses
            self._floats = {}

    async def reset(self, requests: Sequence[CounterRequest]) -> int:
        now = self._clock.now()
        cleared = 0
        for request in requests:
            for limit in request.limits:
                entry = self._counters.pop(request.key(limit), None)
                if entry is not None and entry[0] > now:
                    cleared += 1
        return cleared

    async def refund(self, requests: Sequence[CounterRequest], charged_at: float) -> None:
        """Gives each request's `cost` back to its counters (`algorithms.REFUNDS`)."""
        now = self._clock.now()
        for request in requests:
            for limit in request.limits:
                key = request.key(limit)
                entry = self._counters.get(key)
                if entry is None or entry[0] <= now:
                    continue
                refunded = REFUNDS[limit.algorithm](entry[1:], now, limit, request.cost, charged_at)
                if refunded is not None:
                    self._counters[key] = (entry[0], *refunded)

    async def acquire(self, leases: Sequence[LeaseRequest], lease: str) -> list[LeaseResult]:
        return self._leases.acquire(leases, lease, self._clock.now())

    async def release(self, keys: Sequence[str], lease: str) -> int:
        return self._leases.release(keys, lease, self._clock.now())

    def now(self) -> float:
        return self._clock.now()

    async def kv_get(self, key: str) -> str | None:
        entry = self._values.get(key)
        return entry[1] if entry is not None and entry[0] > self._clock.now() else None

    async def kv_set(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool:
        now = self._clock.now()
        if only_new and await self.kv_get(key) is not None:
            return False
        if len(self._values) >= MAX_VALUES:  # bounded: the expired ones go first
            self._values = {k: v for k, v in self._values.items() if v[0] > now}
        self._values[key] = (now + ttl_s, value)
        return True

    async def ping(self) -> None:
        """Always answers: the counters are in this process."""

    async def close(self) -> None:
        self._counters.clear()
        self._buckets.clear()
        self._floats.clear()
        self._next_sweep = math.inf
