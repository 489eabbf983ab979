"""The one narrow interface every counter store offers the limiter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ratelimitd.model import Limit, LimitResult


@dataclass(frozen=True, slots=True)
class CounterRequest:
    """One descriptor's hit: all of `limits` must allow `cost`, or none is charged.

    Each limit's counter lives at `f"{base}:{limit.counter_id}"`.
    """

    base: str
    limits: tuple[Limit, ...]
    cost: int
    # Whether its denial denies the whole call (then nothing of the call is charged). Not for a
    # descriptor in shadow or quota mode, whose being over its limit lets the request through.
    binding: bool = True

    def key(self, limit: Limit) -> str:
        return f"{self.base}:{limit.counter_id}"


@dataclass(slots=True)  # read-only; not frozen: see `model.Decision`
class CounterResult:
    allowed: bool
    results: tuple[LimitResult, ...]


class Backend(Protocol):
    name: str  # a short, fixed label for metrics
    description: str  # for logs: which store, where (no secrets)

    async def hit(self, requests: Sequence[CounterRequest]) -> list[CounterResult]:
        """Applies every request atomically per request; raises `BackendError` on failure."""
        ...

    async def reset(self, requests: Sequence[CounterRequest]) -> int:
        """Clears the counters of `requests`; returns how many existed."""
        ...

    async def refund(self, requests: Sequence[CounterRequest], charged_at: float) -> None:
        """Gives each request's `cost` back to its counters, to what was charged at
        `charged_at` (a reservation settled below its estimate)."""
        ...

    async def acquire(self, leases: Sequence[LeaseRequest], lease: str) -> list[LeaseResult]:
        """Adds `lease` to every key when each has room, else to none (leases.py)."""
        ...

    async def release(self, keys: Sequence[str], lease: str) -> int:
        """Ends `lease` on `keys`; returns on how many it was still held."""
        ...

    def now(self) -> float:
        """The time the counters are kept in, as well as it is known here (Redis counts by
        its own clock; this host's is near it)."""
        ...

    async def kv_get(self, key: str) -> str | None:
        """A value `kv_set` stored, while it lives."""
        ...

    async def kv_set(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool:
        """Stores `value` for `ttl_s` seconds; with `only_new`, only when the key holds
        nothing (then whether it did)."""
        ...

    async def ping(self) -> None:
        """Returns when the store answers now; raises `BackendError`, saying why, when not."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A lease on one key (leases.py): at most `max_in_flight` held there at once, each for
    `ttl_s` seconds unless released sooner."""

    key: str
    max_in_flight: int
    ttl_s: float


@dataclass(frozen=True, slots=True)
class LeaseResult:
    allowed: bool
    in_flight: int  # leases held on the key after the call (this one included when allowed)
    retry_after: float  # when denied: until the first held lease there ends by its TTL
