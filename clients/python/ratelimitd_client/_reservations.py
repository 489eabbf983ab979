"""Reserve, then commit or refund (ratelimitd's `RateLimitReservations`): the messages and
the answers, with no I/O; `RateLimitClient` and `AsyncRateLimitClient` send them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from ratelimitd_client._core import (
    MAX_HITS,
    DescriptorLike,
    InvalidRequest,
    _admin_descriptors,
    check_arguments,
)
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2 as pb

DEFAULT_RESERVATION_TTL_S = 300.0


@dataclass
class Reservation:
    """What `reserve` answered. Inside `reservation(...)`, `commit(actual)` says what to
    settle the reservation at when the block ends (without it, the estimate is refunded)."""

    id: str
    allowed: bool
    retry_after: int  # whole seconds, when not allowed
    actual: int | None = None

    def commit(self, actual: int) -> None:
        check_amount(actual, "actual")
        self.actual = actual


def check_amount(amount: int, name: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_HITS:
        raise InvalidRequest(f"{name} must be an integer from 0 to {MAX_HITS}, not {amount!r}")


def reserve_request(
    domain: str, descriptors: Sequence[DescriptorLike], estimate: int, ttl: float
) -> pb.ReserveRequest:
    check_arguments(domain, estimate)
    if estimate < 1:
        raise InvalidRequest("estimate must be at least 1")
    if not 0 < ttl <= 86_400:
        raise InvalidRequest(f"ttl must be more than 0 and at most 86400 seconds, not {ttl!r}")
    whole = math.floor(ttl)
    return pb.ReserveRequest(
        domain=domain,
        descriptors=_admin_descriptors(descriptors),
        estimate=estimate,
        ttl=Duration(seconds=whole, nanos=int((ttl - whole) * 1e9)),
    )


def reservation_from_response(response: pb.ReserveResponse) -> Reservation:
    wait = response.retry_after.seconds + response.retry_after.nanos / 1e9
    return Reservation(response.id, response.allowed, math.ceil(wait))


def reservation_id(reservation_or_id: Reservation | str) -> str:
    if isinstance(reservation_or_id, Reservation):
        if not reservation_or_id.allowed:
            raise InvalidRequest("a reservation that was not allowed has nothing to settle")
        return reservation_or_id.id
    return reservation_or_id
