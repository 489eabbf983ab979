"""A decision straight to the bytes of Envoy's `RateLimitResponse`, without building messages.

Building the protobuf message and serializing it is a good part of a decision's cost in
Python, and most of a response repeats: each limit's `current_limit` is the same on every
call, so its encoding is made once per limit. The bytes are exactly what
`decision_to_proto(decision).SerializeToString()` gives (fields in number order, proto3
defaults left out); tests/unit/test_encode.py checks that on random decisions.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from ratelimitd.model import Code, Decision, Limit, Status

_SMALL = [bytes((n,)) for n in range(128)]
_MAX_CACHED_LIMITS = 10_000
_MAX_CACHED_DURATIONS = 4_096


def varint(number: int) -> bytes:
    """A non-negative integer as a protobuf varint, unrolled up to 32 bits: remaining counts
    and nanoseconds run to ten digits, and a loop over bytes costs more than the rest of a
    status."""
    if number < 0x80:
        return _SMALL[number]
    low = number & 0x7F | 0x80
    if number < 0x4000:
        return bytes((low, number >> 7))
    if number < 0x200000:
        return bytes((low, number >> 7 & 0x7F | 0x80, number >> 14))
    if number < 0x10000000:
        return bytes((low, number >> 7 & 0x7F | 0x80, number >> 14 & 0x7F | 0x80, number >> 21))
    if number < 0x800000000:
        return bytes(
            (
                low,
                number >> 7 & 0x7F | 0x80,
                number >> 14 & 0x7F | 0x80,
                number >> 21 & 0x7F | 0x80,
                number >> 28,
            )
        )
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def struct_bytes(fields: dict[str, Any]) -> bytes:
    """A `google.protobuf.Struct` of plain values (what YAML gives), encoded by protobuf."""
    message = struct_pb2.Struct()
    message.update(fields)
    encoded: bytes = message.SerializeToString()
    return encoded


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited field (a message, bytes or a string) with its one-byte tag."""
    return tag + varint(len(payload)) + payload


# Tags (field number << 3 | wire type) of the fields written here.
_OVERALL_CODE = b"\x08"  # RateLimitResponse.overall_code = 1, varint
_STATUSES = b"\x12"  # RateLimitResponse.statuses = 2, message
_DYNAMIC_METADATA = b"\x32"  # RateLimitResponse.dynamic_metadata = 6, google.protobuf.Struct
_CODE = b"\x08"  # DescriptorStatus.code = 1
_CURRENT_LIMIT = b"\x12"  # DescriptorStatus.current_limit = 2
_REMAINING = b"\x18"  # DescriptorStatus.limit_remaining = 3
_UNTIL_RESET = b"\x22"  # DescriptorStatus.duration_until_reset = 4
_REQUESTS_PER_UNIT = b"\x08"  # RateLimit.requests_per_unit = 1
_UNIT = b"\x10"  # RateLimit.unit = 2
_NAME = b"\x1a"  # RateLimit.name = 3
_SECONDS = b"\x08"  # Duration.seconds = 1
_NANOS = b"\x10"  # Duration.nanos = 2
_OVERALL_CODE_FIELD = {code: _OVERALL_CODE + _SMALL[code.value] for code in Code}
_CODE_FIELD = {code: _CODE + _SMALL[code.value] for code in Code}


class ResponseEncoder:
    """Encodes decisions; remembers each limit's `current_limit` field.

    The memo is keyed by the limit's identity and holds the limit itself, so an id is never
    reused while its entry lives; it is emptied when it reaches `_MAX_CACHED_LIMITS` (limits
    come from the config, or from callers' overrides, which are unbounded).
    """

    def __init__(self) -> None:
        self._limits: dict[int, tuple[Limit, bytes, bytes]] = {}
        # `duration_until_reset` fields by seconds: windows of one period end together, and
        # Redis answers in whole milliseconds, so the statuses of one batch share a few
        self._durations: dict[float, bytes] = {}

    def response(self, decision: Decision) -> bytes:
        out = _OVERALL_CODE_FIELD[decision.overall]
        for status in decision.statuses:
            encoded = self._status(status)
            size = len(encoded)
            out += _STATUSES + (_SMALL[size] if size < 0x80 else varint(size)) + encoded
        if decision.dynamic_metadata is not None:  # (rare: asked for by a setting)
            out += length_delimited(_DYNAMIC_METADATA, struct_bytes(decision.dynamic_metadata))
        return out

    def _status(self, status: Status) -> bytes:
        limit = status.limit
        out = _CODE_FIELD[status.code] if limit is None else self._head(status.code, limit)
        remaining = status.remaining
        if remaining:
            out += _REMAINING + (_SMALL[remaining] if remaining < 0x80 else varint(remaining))
        reset_after = status.reset_after
        if reset_after > 0:
            duration = self._durations.get(reset_after)
            if duration is None:
                duration = self._duration(reset_after)
            out += duration
        return out

    def _duration(self, reset_after: float) -> bytes:
        seconds = math.floor(reset_after)
        nanos = int((reset_after - seconds) * 1e9)
        payload = (_SECONDS + varint(seconds) if seconds else b"") + (
            _NANOS + varint(nanos) if nanos else b""
        )
        field = _UNTIL_RESET + _SMALL[len(payload)] + payload  # at most 16 bytes
        if len(self._durations) >= _MAX_CACHED_DURATIONS:
            self._durations.clear()
        self._durations[reset_after] = field
        return field

    def _head(self, code: Code, limit: Limit) -> bytes:
        """`code` and `current_limit`: the part of a status that repeats call after call."""
        cached = self._limits.get(id(limit))
        if cached is None or cached[0] is not limit:
            current_limit = _current_limit(limit)
            cached = (
                limit,
                _CODE_FIELD[Code.OK] + current_limit,
                _CODE_FIELD[Code.OVER_LIMIT] + current_limit,
            )
            if len(self._limits) >= _MAX_CACHED_LIMITS:
                self._limits.clear()
            self._limits[id(limit)] = cached
        return cached[1] if code is Code.OK else cached[2]


def _current_limit(limit: Limit) -> bytes:
    payload = b""
    if limit.requests_per_unit:
        payload += _REQUESTS_PER_UNIT + varint(limit.requests_per_unit)
    payload += _UNIT + _SMALL[limit.unit.value]
    if limit.name:
        payload += length_delimited(_NAME, limit.name.encode())
    return length_delimited(_CURRENT_LIMIT, payload)
