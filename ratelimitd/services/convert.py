"""Envoy's protobuf messages ⇄ ratelimitd's model. The only module that knows both."""

from __future__ import annotations

import math

from envoy.service.ratelimit.v3 import rls_pb2

from ratelimitd.errors import InvalidRequest
from ratelimitd.model import Code, Decision, Descriptor, LimitOverride, Request, Unit
from ratelimitd.services.handlers import Malformed, parse_message

_OVERRIDE_UNITS = {unit.value: unit for unit in Unit}


def request_from_bytes(body: bytes) -> Request:
    """An encoded `RateLimitRequest`; one that does not parse is an `InvalidRequest`."""
    message = parse_message(rls_pb2.RateLimitRequest, body)
    if isinstance(message, Malformed):
        raise InvalidRequest(message.message)
    return request_from_proto(message)


def request_from_proto(message: rls_pb2.RateLimitRequest) -> Request:
    descriptors = []
    for position, descriptor in enumerate(message.descriptors):
        override = None
        if descriptor.HasField("limit"):
            unit = _OVERRIDE_UNITS.get(descriptor.limit.unit)
            if unit is None:
                raise InvalidRequest(
                    f"descriptors[{position}].limit has unit {descriptor.limit.unit}: "
                    "expected SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR"
                )
            override = LimitOverride(descriptor.limit.requests_per_unit, unit)
        hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else None
        descriptors.append(
            Descriptor(
                entries=tuple((entry.key, entry.value) for entry in descriptor.entries),
                override=override,
                hits_addend=hits,
            )
        )
    return Request(
        domain=message.domain,
        descriptors=tuple(descriptors),
        hits_addend=message.hits_addend or 1,
    )


def decision_to_proto(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(overall_code=decision.overall.value)
    for status in decision.statuses:
        item = response.statuses.add(code=status.code.value, limit_remaining=status.remaining)
        if status.limit is not None:
            limit = status.limit
            item.current_limit.requests_per_unit = limit.requests_per_unit
            item.current_limit.unit = limit.unit.value
            item.current_limit.name = limit.name
        if status.reset_after > 0:
            seconds = math.floor(status.reset_after)
            item.duration_until_reset.seconds = seconds
            item.duration_until_reset.nanos = int((status.reset_after - seconds) * 1e9)
    if decision.dynamic_metadata is not None:
        response.dynamic_metadata.SetInParent()  # present even when empty, as encoded
        response.dynamic_metadata.update(decision.dynamic_metadata)
    return response


__all__ = ["Code", "decision_to_proto", "request_from_bytes", "request_from_proto"]
