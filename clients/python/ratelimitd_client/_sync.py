"""`RateLimitClient`: the blocking twin, on one long-lived `grpc.Channel` (thread-safe)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from ratelimitd_client._core import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    ClientOptions,
    Decision,
    DescriptorLike,
    FailureMode,
    LimitState,
    ServiceUnavailable,
    admin_metadata,
    check_request,
    cleared_from_response,
    decision_from_response,
    failure_decision,
    peek_request,
    reset_request,
    states_from_response,
    translate_error,
)
from ratelimitd_client._failures import FailureLog
from ratelimitd_client._leases import (
    Lease,
    acquire_request,
    lease_from_response,
    release_request,
)
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as admin_grpc
from ratelimitd_client._reservations import (
    DEFAULT_RESERVATION_TTL_S,
    Reservation,
    check_amount,
    reservation_from_response,
    reservation_id,
    reserve_request,
)


class _Channel:
    def __init__(self, channel: grpc.Channel, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        self.rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        self.admin: Any = admin_grpc.RateLimitAdminStub(channel)  # type: ignore[no-untyped-call]
        self.reservations: Any = admin_grpc.RateLimitReservationsStub(channel)  # type: ignore[no-untyped-call]


class RateLimitClient:
    """Asks ratelimitd whether requests may pass. Create one per process and share it.

    `timeout` (seconds) bounds every call; `failure_mode` says what `check` answers when
    ratelimitd times out, cannot be reached or fails: "allow" or "deny" (the Decision's
    `failure` says so, and it is logged). `admin_token` is needed by `reset` and `peek` only.
    `credentials` (from `grpc.ssl_channel_credentials`) turns on TLS.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        failure_mode: FailureMode = "allow",
        admin_token: str | None = None,
        failure_retry_after: int = 1,
        credentials: grpc.ChannelCredentials | None = None,
        keepalive_time_s: float = 330.0,
        keepalive_timeout_s: float = 20.0,
        keepalive_without_calls: bool = False,
        channel_options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        self.options = ClientOptions(
            target=target,
            timeout=timeout,
            failure_mode=failure_mode,
            admin_token=admin_token,
            failure_retry_after=failure_retry_after,
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=keepalive_timeout_s,
            keepalive_without_calls=keepalive_without_calls,
            channel_options=tuple(channel_options),
        )
        self._credentials = credentials
        self._lock = threading.Lock()
        self._current: _Channel | None = None
        self._failures = FailureLog(target)

    def _channel(self) -> _Channel:
        """The channel, made on first use: a client made at import time under a pre-forking
        server (gunicorn --preload) gets its channel in each worker. A child forked after the
        channel was made makes its own (a gRPC channel does not survive fork)."""
        current, pid = self._current, os.getpid()
        if current is None or current.pid != pid:
            with self._lock:
                current = self._current
                if current is None or current.pid != pid:
                    options = self.options.grpc_options()
                    if self._credentials is None:
                        channel = grpc.insecure_channel(self.options.target, options=options)
                    else:
                        channel = grpc.secure_channel(
                            self.options.target, self._credentials, options=options
                        )
                    current = self._current = _Channel(channel, pid)
        return current

    def check(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        hits: int = 1,
        *,
        timeout: float | None = None,
    ) -> Decision:
        """Counts `hits` against every limit the descriptors match (0: only looks)."""
        request = check_request(domain, descriptors, hits)
        try:
            response = self._channel().rls.ShouldRateLimit(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            error = translate_error(exc)
            if not isinstance(error, ServiceUnavailable):
                raise error from exc
            decision = failure_decision(self.options, error)
            if decision.failure is not None:  # always, for the type checker
                self._failures.failed(decision.failure)
            return decision
        self._failures.answered()
        return decision_from_response(response)

    def reset(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        *,
        token: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Clears the counters of every limit the descriptors match; returns how many existed."""
        request = reset_request(domain, descriptors)
        metadata = admin_metadata(self.options.token_for(token))
        try:
            response = self._channel().admin.Reset(
                request, metadata=metadata, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return cleared_from_response(response)

    def peek(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        *,
        token: str | None = None,
        timeout: float | None = None,
    ) -> list[LimitState]:
        """Where each matched limit stands, consuming nothing."""
        request = peek_request(domain, descriptors)
        metadata = admin_metadata(self.options.token_for(token))
        try:
            response = self._channel().admin.Peek(
                request, metadata=metadata, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return states_from_response(response)

    def reserve(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        estimate: int,
        ttl: float = DEFAULT_RESERVATION_TTL_S,
        *,
        timeout: float | None = None,
    ) -> Reservation:
        """Charges `estimate` to every limit the descriptors match, when it fits there (a
        reservation that is not allowed charges nothing). Settle it with `commit` or `refund`
        within `ttl` seconds, or it stays charged at the estimate."""
        request = reserve_request(domain, descriptors, estimate, ttl)
        try:
            response = self._channel().reservations.Reserve(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return reservation_from_response(response)

    def commit(
        self, reservation_or_id: Reservation | str, actual: int, *, timeout: float | None = None
    ) -> int:
        """Settles the reservation at `actual` (the difference from the estimate is charged,
        or given back); again with the same `actual` it answers the same."""
        check_amount(actual, "actual")
        request = admin_pb.CommitRequest(id=reservation_id(reservation_or_id), actual=actual)
        try:
            response = self._channel().reservations.Commit(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return int(response.charged)

    def refund(self, reservation_or_id: Reservation | str, *, timeout: float | None = None) -> int:
        """Gives the whole estimate back."""
        request = admin_pb.RefundRequest(id=reservation_id(reservation_or_id))
        try:
            response = self._channel().reservations.Refund(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return int(response.charged)

    @contextlib.contextmanager
    def reservation(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        estimate: int,
        ttl: float = DEFAULT_RESERVATION_TTL_S,
    ) -> Iterator[Reservation]:
        """`with client.reservation(...) as r: ...; r.commit(actual)`: reserves on entry; on
        exit commits what `r.commit` was given, or refunds the estimate."""
        reserved = self.reserve(domain, descriptors, estimate, ttl)
        try:
            yield reserved
        finally:
            if reserved.allowed:
                if reserved.actual is None:
                    self.refund(reserved)
                else:
                    self.commit(reserved, reserved.actual)

    def acquire(
        self, domain: str, descriptors: Sequence[DescriptorLike], *, timeout: float | None = None
    ) -> Lease:
        """Takes a place on every descriptor a concurrency rule (`algorithm: concurrency`)
        matches, when each has room; `release` it when the work is done, or it ends by the
        rule's `lease_ttl_s`. A lease that is not allowed holds nothing."""
        request = acquire_request(domain, descriptors)
        try:
            response = self._channel().reservations.Acquire(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return lease_from_response(response)

    def release(self, lease_or_id: Lease | str, *, timeout: float | None = None) -> bool:
        """Ends the lease; whether it was still held (not released before, nor ended by TTL)."""
        request = release_request(lease_or_id)
        try:
            response = self._channel().reservations.Release(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return bool(response.released)

    @contextlib.contextmanager
    def lease(self, domain: str, descriptors: Sequence[DescriptorLike]) -> Iterator[Lease]:
        """`with client.lease(...) as lease: if lease.allowed: ...`: acquires on entry,
        releases on exit (also when the block raised)."""
        acquired = self.acquire(domain, descriptors)
        try:
            yield acquired
        finally:
            if acquired.allowed:
                self.release(acquired)

    def connect(self, timeout: float = 2.0) -> bool:
        """Connects now (e.g. at startup) so that the first check does not pay for it; returns
        whether ratelimitd could be reached within `timeout` seconds. Optional."""
        try:
            grpc.channel_ready_future(self._channel().channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            current, self._current = self._current, None
        if current is not None and current.pid == os.getpid():
            current.channel.close()

    def __enter__(self) -> RateLimitClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
