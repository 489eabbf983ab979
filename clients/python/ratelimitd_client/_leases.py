"""Concurrency leases (ratelimitd's `Acquire` and `Release`): the messages and the answers,
with no I/O; `RateLimitClient` and `AsyncRateLimitClient` send them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ratelimitd_client._core import (
    DescriptorLike,
    InvalidRequest,
    _admin_descriptors,
    check_arguments,
)
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2 as pb


@dataclass(frozen=True)
class Lease:
    """What `acquire` answered: a place among a key's `max_in_flight`, held until released or
    until `ttl` seconds have passed (a lease that holds nothing, because no concurrency rule
    matched, has a `ttl` of 0)."""

    id: str  # empty when not allowed
    allowed: bool
    retry_after: int  # whole seconds, rounded up, when not allowed
    ttl: float


def acquire_request(domain: str, descriptors: Sequence[DescriptorLike]) -> pb.AcquireRequest:
    check_arguments(domain, 1)
    return pb.AcquireRequest(domain=domain, descriptors=_admin_descriptors(descriptors))


def lease_from_response(response: pb.AcquireResponse) -> Lease:
    wait = response.retry_after.seconds + response.retry_after.nanos / 1e9
    ttl = response.ttl.seconds + response.ttl.nanos / 1e9
    return Lease(response.id, response.allowed, math.ceil(wait), ttl)


def release_request(lease_or_id: Lease | str) -> pb.ReleaseRequest:
    if isinstance(lease_or_id, Lease):
        if not lease_or_id.allowed:
            raise InvalidRequest("a lease that was not allowed holds nothing to release")
        return pb.ReleaseRequest(id=lease_or_id.id)
    return pb.ReleaseRequest(id=lease_or_id)
