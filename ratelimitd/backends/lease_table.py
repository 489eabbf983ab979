"""Leases in this process: the memory backend's store for `algorithm: concurrency`, and the
twin of `backends/redis/lua/lease_acquire.lua` and `lease_release.lua`.

Each key holds its leases with the time each one ends. A lease that ends by its TTL is gone
at the next look at its key, so an app that crashed while holding one frees it by then.
"""

from __future__ import annotations

from collections.abc import Sequence

from ratelimitd.backends.base import LeaseRequest, LeaseResult

_FIRST_SWEEP = 1024


class LeaseTable:
    def __init__(self) -> None:
        self._held: dict[str, dict[str, float]] = {}  # key -> lease -> when it ends
        self._sweep_above = _FIRST_SWEEP

    def acquire(self, leases: Sequence[LeaseRequest], lease: str, now: float) -> list[LeaseResult]:
        """Adds `lease` to every key when each has room, else to none."""
        if len(self._held) > self._sweep_above:
            self._sweep(now)
        results = [self._look(request, now) for request in leases]
        if not all(result.allowed for result in results):
            return results
        for request in leases:
            self._held.setdefault(request.key, {})[lease] = now + request.ttl_s
        return [LeaseResult(True, len(self._held[request.key]), 0.0) for request in leases]

    def release(self, keys: Sequence[str], lease: str, now: float) -> int:
        released = 0
        for key in keys:
            held = self._live(key, now)
            if held is not None and held.pop(lease, None) is not None:
                released += 1
                if not held:
                    del self._held[key]
        return released

    def _look(self, request: LeaseRequest, now: float) -> LeaseResult:
        held = self._live(request.key, now) or {}
        if len(held) < request.max_in_flight:
            return LeaseResult(True, len(held), 0.0)
        return LeaseResult(False, len(held), min(held.values()) - now)

    def _live(self, key: str, now: float) -> dict[str, float] | None:
        """The key's leases, those that ended dropped (and the key, when none is left)."""
        held = self._held.get(key)
        if held is None:
            return None
        for lease in [lease for lease, ends in held.items() if ends <= now]:
            del held[lease]
        if not held:
            del self._held[key]
            return None
        return held

    def _sweep(self, now: float) -> None:
        """Drops every ended lease: keys nobody looks at again would otherwise stay."""
        for key in list(self._held):
            self._live(key, now)
        self._sweep_above = max(_FIRST_SWEEP, 2 * len(self._held))
