"""Reserve, then commit or refund: for costs known only after the work (an LLM answer's tokens)
and estimated before it.

- `reserve` charges the estimate to every limit the descriptors match, as a hit of that cost
  would be charged, but only when it fits: a denied reservation charges nothing, whatever
  the limits' `charge` policy. The reservation is recorded, with a time to live.
- `commit(id, actual)` charges the difference: more as a hit under each limit's `charge`
  policy (a debt under `always`; under `if_fits`, nothing when it does not fit), less as a
  refund to the window (or bucket) the estimate went to. `refund(id)` is `commit(id, 0)`.
- A reservation is settled once. Settling it again with the same amount answers the same
  (idempotent, for retries); with another amount it is an error. A reservation neither
  committed nor refunded within its time to live is settled at its estimate: its record is
  gone, the estimate stays charged.

Settling marks the reservation first (one `SET NX`), then adjusts the counters: of concurrent
settlements exactly one applies, so N reserve/commit pairs leave exactly the sum of the
actual amounts charged (within the limits' policies).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass
from typing import Any

from ratelimitd.backends.base import Backend
from ratelimitd.errors import InvalidRequest
from ratelimitd.limiter import Limiter, Prepared
from ratelimitd.model import Charge, Code, Descriptor, Request

MAX_TTL_S = 86_400.0
DEFAULT_TTL_S = 300.0
_ID_BYTES = 16


@dataclass(frozen=True, slots=True)
class Reserved:
    id: str  # empty when not allowed
    allowed: bool
    retry_after: float  # seconds, when not allowed


class Reservations:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def reserve(
        self, domain: str, descriptors: tuple[Descriptor, ...], estimate: int, ttl_s: float
    ) -> Reserved:
        if estimate < 1:
            raise InvalidRequest("estimate must be at least 1")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise InvalidRequest(f"ttl must be more than 0 s and at most {MAX_TTL_S:g} s")
        prepared = self.limiter.prepare(Request(domain, descriptors, hits_addend=estimate))
        capacities = [limit.capacity for plan in prepared.plans for limit in plan.limits]
        if capacities and estimate > max(capacities):
            raise InvalidRequest(
                f"estimate {estimate} is above the largest limit that applies ({max(capacities)})"
            )
        decision = await self.limiter.decide(_only_if_it_fits(prepared))
        if decision.overall is Code.OVER_LIMIT:
            waits = [s.reset_after for s in decision.statuses if s.code is Code.OVER_LIMIT]
            return Reserved("", False, max(waits, default=0.0))
        reservation_id = secrets.token_urlsafe(_ID_BYTES)
        record = {
            "domain": domain,
            "descriptors": [[list(entry) for entry in d.entries] for d in descriptors],
            "estimate": estimate,
            "at": self._backend.now(),  # which window (or bucket state) the estimate went to
            "ttl": ttl_s,
        }
        await self._backend.kv_set(self._key(reservation_id), json.dumps(record), ttl_s)
        return Reserved(reservation_id, True, 0.0)

    async def commit(self, reservation_id: str, actual: int) -> int:
        """Settles the reservation at `actual`; returns what it charged in all."""
        if actual < 0:
            raise InvalidRequest("actual must not be negative")
        if actual > self.limiter.options.bounds.max_hits:
            raise InvalidRequest(f"actual {actual} is over {self.limiter.options.bounds.max_hits}")
        record = await self._record(reservation_id)
        settled = self._key(reservation_id) + ":settled"
        if not await self._backend.kv_set(settled, str(actual), record["ttl"], only_new=True):
            if await self._backend.kv_get(settled) == str(actual):
                return actual  # the same settlement, again: nothing more to do
            raise InvalidRequest(f"reservation {reservation_id} is already settled")
        await self._adjust(record, actual - int(record["estimate"]))
        return actual

    async def refund(self, reservation_id: str) -> int:
        """Gives the whole estimate back (settles the reservation at 0)."""
        return await self.commit(reservation_id, 0)

    async def _adjust(self, record: dict[str, Any], delta: int) -> None:
        if not delta:
            return
        descriptors = tuple(
            Descriptor(tuple((key, value) for key, value in entries))
            for entries in record["descriptors"]
        )
        prepared = self.limiter.prepare(Request(record["domain"], descriptors, abs(delta)))
        if delta > 0:  # more than estimated: charged as a hit, under each limit's policy
            await self.limiter.decide(prepared)
        elif prepared.counters:
            await self._backend.refund(prepared.counters, float(record["at"]))

    async def _record(self, reservation_id: str) -> dict[str, Any]:
        text = await self._backend.kv_get(self._key(reservation_id))
        if text is None:
            raise InvalidRequest(f"unknown or expired reservation {reservation_id!r}")
        record: dict[str, Any] = json.loads(text)
        return record

    def _key(self, reservation_id: str) -> str:
        if not reservation_id or len(reservation_id) > 64 or not reservation_id.isascii():
            raise InvalidRequest(f"not a reservation id: {reservation_id[:64]!r}")
        return f"{self.limiter.options.key_prefix}reservation:{reservation_id}"

    @property
    def _backend(self) -> Backend:
        return self.limiter.backend


def _only_if_it_fits(prepared: Prepared) -> Prepared:
    """The same hits with every limit charged only when it fits (`charge: if_fits`): a
    denied reservation charges nothing. The counters are the same (`counter_id` leaves the
    policy out)."""
    counters = tuple(
        dataclasses.replace(
            counter,
            limits=tuple(
                dataclasses.replace(limit, charge=Charge.IF_FITS) for limit in counter.limits
            ),
        )
        for counter in prepared.counters
    )
    return dataclasses.replace(prepared, counters=counters)
