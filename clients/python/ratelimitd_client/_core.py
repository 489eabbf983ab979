"""The part of the client that does no I/O: requests are built here, answers parsed here.

`RateLimitClient` (sync) and `AsyncRateLimitClient` (asyncio) are thin twins around this
module, as httpx's are: each one only moves the messages built here over its own kind of gRPC
channel, and hands any `grpc.RpcError` to `translate_error`, the one place that knows gRPC's
status codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import UInt64Value

from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb

Entry: TypeAlias = tuple[str, str]
"""One descriptor entry: (key, value)."""
DescriptorLike: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]]
"""One descriptor: a mapping (its order is the entry order) or a sequence of (key, value)."""
FailureMode: TypeAlias = Literal["allow", "deny"]
FailureReason: TypeAlias = Literal["timeout", "unavailable", "error"]

DEFAULT_TARGET = "127.0.0.1:8081"
DEFAULT_TIMEOUT_S = 0.05
MAX_HITS = 4_294_967_295
FAILURE_MODES: tuple[FailureMode, ...] = ("allow", "deny")

_OVER_LIMIT = rls_pb2.RateLimitResponse.Code.Value("OVER_LIMIT")
_CODE_NAMES = {value: name for name, value in rls_pb2.RateLimitResponse.Code.items()}
_UNIT_NAMES = {
    value: name.lower() for name, value in rls_pb2.RateLimitResponse.RateLimit.Unit.items()
}


# Errors ------------------------------------------------------------------------------------


class RateLimitError(Exception):
    """Base of every error this package raises."""


class InvalidRequest(RateLimitError, ValueError):
    """Bad arguments, found here before sending or by ratelimitd (`INVALID_ARGUMENT`)."""


class Unauthenticated(RateLimitError):
    """The admin API refused the token, or no token was given."""


class ServiceUnavailable(RateLimitError):
    """ratelimitd gave no decision: it timed out, could not be reached, or failed."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"ratelimitd {reason}: {detail}")
        self.reason: FailureReason = reason
        self.detail = detail


_STATUS_CODES = {status.value[0]: status for status in grpc.StatusCode}
_CALLER_ERRORS: dict[grpc.StatusCode, type[RateLimitError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
}
_FAILURE_REASONS: dict[grpc.StatusCode, FailureReason] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}


def translate_error(exc: grpc.RpcError) -> RateLimitError:
    """The one place where gRPC's errors become ours; callers `raise ... from exc`.

    The caller's mistakes raise; anything else means ratelimitd gave no decision.
    """
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return translate_status(code, details or str(exc))


def translate_status(code: grpc.StatusCode | None, details: str) -> RateLimitError:
    """`translate_error` for a status given apart from an exception (a batch item's)."""
    message = f"{getattr(code, 'name', 'UNKNOWN')}: {details}"
    caller_error = _CALLER_ERRORS.get(code)
    if caller_error is not None:
        return caller_error(message)
    return ServiceUnavailable(_FAILURE_REASONS.get(code, "error"), message)


# Results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The limit ratelimitd applied to one descriptor (Envoy's `current_limit`)."""

    requests_per_unit: int
    unit: str  # second, minute, hour, day, week, month or year
    name: str = ""


@dataclass(frozen=True, slots=True)
class DescriptorStatus:
    """ratelimitd's answer for one request descriptor, in request order."""

    code: str  # "OK" or "OVER_LIMIT"
    limit: RateLimit | None  # None: no limit applies to this descriptor
    remaining: int | None  # what could still be admitted now; None when no limit applies
    reset_after: float  # seconds: on OVER_LIMIT until a retry fits, on OK until fully restored

    @property
    def allowed(self) -> bool:
        return self.code != "OVER_LIMIT"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the failure mode, not ratelimitd, decided."""

    mode: FailureMode
    reason: FailureReason
    detail: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one check.

    `limit`, `remaining` and `reset_after` describe the most restrictive limit that applied
    (the one that denied and frees up last, or else the one with the least left); they are None
    when no limit applied. `retry_after` is whole seconds, at least 1 on a denial, 0 otherwise.
    `failure` is set when ratelimitd gave no answer and the client's failure mode decided.
    """

    allowed: bool
    retry_after: int = 0
    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None
    statuses: tuple[DescriptorStatus, ...] = ()
    failure: Failure | None = None

    @property
    def reset(self) -> int | None:
        """`reset_after` in whole seconds, rounded up (the `RateLimit-Reset` value)."""
        return None if self.reset_after is None else ceil_seconds(self.reset_after)

    def headers(self) -> dict[str, str]:
        """`RateLimit-Limit`, `-Remaining`, `-Reset` when a limit applied; `Retry-After` on a denial."""
        headers: dict[str, str] = {}
        if self.limit is not None and self.remaining is not None and self.reset is not None:
            headers["RateLimit-Limit"] = str(self.limit)
            headers["RateLimit-Remaining"] = str(self.remaining)
            headers["RateLimit-Reset"] = str(self.reset)
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


@dataclass(frozen=True, slots=True)
class LimitState:
    """Where one matched limit stands (admin `Peek`); nothing was consumed."""

    descriptor_index: int
    rule: str
    name: str
    algorithm: str
    requests_per_unit: int
    unit: str
    unit_multiplier: int
    capacity: int
    remaining: int
    reset_after: float
    over_limit: bool
    shadow_mode: bool


def ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up; a microsecond of float noise does not add a second."""
    return max(0, math.ceil(seconds - 1e-6))


def most_restrictive(decisions: Sequence[Decision]) -> Decision | None:
    """Of several decisions on one request, the one its response headers should show."""
    if not decisions:
        return None
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: (d.retry_after, d.limit is not None))
    limited = [d for d in decisions if d.limit is not None]
    if not limited:
        return decisions[0]
    return min(limited, key=lambda d: (d.remaining or 0, -(d.reset_after or 0.0)))


# Options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What both clients are configured with; validated once, here."""

    target: str = DEFAULT_TARGET
    timeout: float = DEFAULT_TIMEOUT_S
    failure_mode: FailureMode = "allow"
    admin_token: str | None = None
    failure_retry_after: int = 1
    keepalive_time_s: float = 330.0
    keepalive_timeout_s: float = 20.0
    keepalive_without_calls: bool = False
    channel_options: tuple[tuple[str, str | int], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.failure_mode not in FAILURE_MODES:
            raise InvalidRequest(
                f"failure_mode must be 'allow' or 'deny', not {self.failure_mode!r}"
            )
        if not self.target:
            raise InvalidRequest("target must be HOST:PORT")
        check_timeout(self.timeout)
        if self.failure_retry_after < 1:
            raise InvalidRequest("failure_retry_after must be at least 1 second")
        if self.keepalive_time_s <= 0 or self.keepalive_timeout_s <= 0:
            raise InvalidRequest("keepalive_time_s and keepalive_timeout_s must be positive")

    def timeout_for(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else check_timeout(timeout)

    def token_for(self, token: str | None) -> str:
        chosen = token if token is not None else self.admin_token
        if not chosen:
            raise Unauthenticated("the admin API needs a token: pass admin_token= or token=")
        return chosen

    def grpc_options(self) -> list[tuple[str, str | int]]:
        """One long-lived channel, kept alive by HTTP/2 pings, that reconnects soon after
        ratelimitd returns.

        A gRPC server with default settings (ratelimitd's, today) sends GOAWAY
        "too_many_pings" to a client that pings more often than every 5 minutes, or at all
        while no call is in flight; hence 330 s (a margin for early arrival) and no pings while
        idle. Lower them only for a server that allows it."""
        return [
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
            # not grpc.min_reconnect_backoff_ms: it is also the time a connection attempt
            # (TCP, TLS, HTTP/2 settings) may take, 20 s by default
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 5000),
            *self.channel_options,
        ]


def check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise InvalidRequest(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def admin_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# Requests ----------------------------------------------------------------------------------


def normalize_descriptors(descriptors: Sequence[DescriptorLike]) -> tuple[tuple[Entry, ...], ...]:
    """Descriptors as tuples of (key, value), checked; raises InvalidRequest before any I/O."""
    if isinstance(descriptors, str | bytes | Mapping) or not isinstance(descriptors, Sequence):
        raise InvalidRequest(
            "descriptors must be a list of descriptors, each a mapping or a list of (key, value)"
        )
    if not descriptors:
        raise InvalidRequest("descriptors must not be empty")
    return tuple(_entries(position, d) for position, d in enumerate(descriptors))


def _entries(position: int, descriptor: DescriptorLike) -> tuple[Entry, ...]:
    where = f"descriptors[{position}]"
    if isinstance(descriptor, Mapping):
        pairs: list[object] = list(descriptor.items())
    elif isinstance(descriptor, Sequence) and not isinstance(descriptor, str | bytes):
        pairs = list(descriptor)
    else:
        raise InvalidRequest(
            f"{where} must be a mapping or a list of (key, value), not {descriptor!r}"
        )
    if not pairs:
        raise InvalidRequest(f"{where} has no entries")
    entries: list[Entry] = []
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise InvalidRequest(f"{where}[{index}] must be a (key, value) pair, not {pair!r}")
        key, value = pair
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequest(f"{where}[{index}]: key and value must be strings, not {pair!r}")
        if not key:
            raise InvalidRequest(f"{where}[{index}] has an empty key")
        entries.append((key, value))
    return tuple(entries)


def _check_domain(domain: str) -> None:
    if not isinstance(domain, str) or not domain:
        raise InvalidRequest("domain must be a non-empty string")


def check_arguments(domain: str, hits: int) -> None:
    """Raises InvalidRequest for an empty domain or a `hits` outside 0..4294967295."""
    _check_domain(domain)
    if isinstance(hits, bool) or not isinstance(hits, int) or not 0 <= hits <= MAX_HITS:
        raise InvalidRequest(f"hits must be an integer from 0 to {MAX_HITS}, not {hits!r}")


def check_request(
    domain: str, descriptors: Sequence[DescriptorLike], hits: int = 1
) -> rls_pb2.RateLimitRequest:
    """Envoy's `RateLimitRequest`. `hits=0` checks without consuming anything."""
    check_arguments(domain, hits)
    request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=max(hits, 1))
    for entries in normalize_descriptors(descriptors):
        descriptor = request.descriptors.add()
        descriptor.entries.extend(
            ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value) for key, value in entries
        )
        if hits == 0:  # a request-level 0 means 1; a per-descriptor 0 is a probe
            descriptor.hits_addend.CopyFrom(UInt64Value(value=0))
    return request


def batch_request(encoded: Sequence[bytes]) -> admin_pb.ShouldRateLimitBatchRequest:
    """ratelimitd's `ShouldRateLimitBatch` request: encoded `RateLimitRequest`s."""
    return admin_pb.ShouldRateLimitBatchRequest(requests=encoded)


def _admin_descriptors(descriptors: Sequence[DescriptorLike]) -> list[admin_pb.Descriptor]:
    return [
        admin_pb.Descriptor(entries=[admin_pb.Entry(key=k, value=v) for k, v in entries])
        for entries in normalize_descriptors(descriptors)
    ]


def reset_request(domain: str, descriptors: Sequence[DescriptorLike]) -> admin_pb.ResetRequest:
    _check_domain(domain)
    return admin_pb.ResetRequest(domain=domain, descriptors=_admin_descriptors(descriptors))


def peek_request(domain: str, descriptors: Sequence[DescriptorLike]) -> admin_pb.PeekRequest:
    _check_domain(domain)
    return admin_pb.PeekRequest(domain=domain, descriptors=_admin_descriptors(descriptors))


# Answers -----------------------------------------------------------------------------------


def _seconds(duration: Duration) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def _status(message: rls_pb2.RateLimitResponse.DescriptorStatus) -> DescriptorStatus:
    limit = None
    if message.HasField("current_limit"):
        current = message.current_limit
        limit = RateLimit(
            requests_per_unit=int(current.requests_per_unit),
            unit=_UNIT_NAMES.get(current.unit, "unknown"),
            name=current.name,
        )
    return DescriptorStatus(
        code=_CODE_NAMES.get(message.code, "UNKNOWN"),
        limit=limit,
        remaining=int(message.limit_remaining) if limit is not None else None,
        reset_after=_seconds(message.duration_until_reset),
    )


def decision_from_response(response: rls_pb2.RateLimitResponse) -> Decision:
    """ratelimitd's answer as a Decision: allowed is `overall_code != OVER_LIMIT`."""
    statuses = tuple(_status(status) for status in response.statuses)
    allowed = response.overall_code != _OVER_LIMIT
    return decision_from_statuses(allowed, statuses)


def decision_from_statuses(allowed: bool, statuses: tuple[DescriptorStatus, ...]) -> Decision:
    retry_after = 0
    if not allowed:
        waits = [s.reset_after for s in statuses if not s.allowed]
        retry_after = max(1, ceil_seconds(max(waits, default=0.0)))
    headline = _headline(allowed, statuses)
    if headline is None or headline.limit is None:
        return Decision(allowed=allowed, retry_after=retry_after, statuses=statuses)
    return Decision(
        allowed=allowed,
        retry_after=retry_after,
        limit=headline.limit.requests_per_unit,
        remaining=headline.remaining,
        reset_after=headline.reset_after,
        statuses=statuses,
    )


def _headline(allowed: bool, statuses: tuple[DescriptorStatus, ...]) -> DescriptorStatus | None:
    """The status the headers show: the denying limit that frees up last, or the least left."""
    limited = [s for s in statuses if s.limit is not None]
    if not limited:
        return None
    denying = [s for s in limited if not s.allowed]
    if not allowed and denying:
        return max(denying, key=lambda s: s.reset_after)
    return min(limited, key=lambda s: (s.remaining or 0, -s.reset_after))


def response_from_result(result: admin_pb.BatchResult) -> rls_pb2.RateLimitResponse:
    """One batch item's answer; raises what `translate_error` gives for the same failed call."""
    if result.error_code:
        code = _STATUS_CODES.get(result.error_code)
        raise translate_status(code, result.error_message or f"status {result.error_code}")
    return rls_pb2.RateLimitResponse.FromString(result.response)


def failure_decision(options: ClientOptions, error: ServiceUnavailable) -> Decision:
    """What the failure mode answers when ratelimitd gave no decision."""
    failure = Failure(mode=options.failure_mode, reason=error.reason, detail=error.detail)
    if options.failure_mode == "allow":
        return Decision(allowed=True, failure=failure)
    return Decision(allowed=False, retry_after=options.failure_retry_after, failure=failure)


def cleared_from_response(response: admin_pb.ResetResponse) -> int:
    return int(response.cleared)


def states_from_response(response: admin_pb.PeekResponse) -> list[LimitState]:
    return [
        LimitState(
            descriptor_index=int(state.descriptor_index),
            rule=state.rule,
            name=state.name,
            algorithm=state.algorithm,
            requests_per_unit=int(state.requests_per_unit),
            unit=state.unit,
            unit_multiplier=int(state.unit_multiplier),
            capacity=int(state.capacity),
            remaining=int(state.remaining),
            reset_after=_seconds(state.reset_after),
            over_limit=bool(state.over_limit),
            shadow_mode=bool(state.shadow_mode),
        )
        for state in response.states
    ]
