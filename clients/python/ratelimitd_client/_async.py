"""`AsyncRateLimitClient`: the asyncio twin, on one long-lived `grpc.aio.Channel`, whose
concurrent checks share gRPC calls (`_coalesce`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from ratelimitd_client._coalesce import Coalescer
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
    """A grpc.aio channel belongs to the event loop it was made in: it is made on first use,
    so a client can be created at import time, before the server's loop runs."""

    def __init__(
        self, channel: grpc.aio.Channel, loop: asyncio.AbstractEventLoop, coalesce: bool
    ) -> None:
        self.channel = channel
        self.loop = loop
        self.admin: Any = admin_grpc.RateLimitAdminStub(channel)  # type: ignore[no-untyped-call]
        single = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit
        batch: Any = admin_grpc.RateLimitBatchStub(channel)  # type: ignore[no-untyped-call]
        self.checks = Coalescer(single, batch.ShouldRateLimitBatch, coalesce=coalesce)
        self.reservations: Any = admin_grpc.RateLimitReservationsStub(channel)  # type: ignore[no-untyped-call]


class AsyncRateLimitClient:
    """The asyncio twin of `RateLimitClient`, with the same arguments and methods (awaited).

    Create one per process (at import time is fine) and share it; `await client.aclose()` on
    shutdown.

    `coalesce` (default True): checks made while an earlier one is out wait for it and then
    go together in one `ShouldRateLimitBatch` call, each with its own timeout, answer and
    errors; a lone check is sent at once. This makes far fewer gRPC calls under load. A server
    without that RPC (Envoy's ratelimit) is detected and sent single calls. False: one call
    per check.
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
        coalesce: bool = True,
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
        self._coalesce = coalesce
        self._current: _Channel | None = None
        self._failures = FailureLog(target)

    def _channel(self) -> _Channel:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is None or current.loop is not loop:
            options = self.options.grpc_options()
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self.options.target, options=options)
            else:
                channel = grpc.aio.secure_channel(
                    self.options.target, self._credentials, options=options
                )
            current = self._current = _Channel(channel, loop, self._coalesce)
        return current

    async def check(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        hits: int = 1,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> Decision:
        """Counts `hits` against every limit the descriptors match (0: only looks)."""
        request = check_request(domain, descriptors, hits)
        try:
            response = await self._channel().checks.check(
                request, self.options.timeout_for(timeout)
            )
        except ServiceUnavailable as error:
            decision = failure_decision(self.options, error)
            if decision.failure is not None:  # always, for the type checker
                self._failures.failed(decision.failure)
            return decision
        self._failures.answered()
        return decision_from_response(response)

    async def reset(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        *,
        token: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> int:
        """Clears the counters of every limit the descriptors match; returns how many existed."""
        request = reset_request(domain, descriptors)
        metadata = admin_metadata(self.options.token_for(token))
        try:
            response = await self._channel().admin.Reset(
                request, metadata=metadata, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return cleared_from_response(response)

    async def peek(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        *,
        token: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> list[LimitState]:
        """Where each matched limit stands, consuming nothing."""
        request = peek_request(domain, descriptors)
        metadata = admin_metadata(self.options.token_for(token))
        try:
            response = await self._channel().admin.Peek(
                request, metadata=metadata, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return states_from_response(response)

    async def reserve(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        estimate: int,
        ttl: float = DEFAULT_RESERVATION_TTL_S,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> Reservation:
        """Charges `estimate` to every limit the descriptors match, when it fits there (a
        reservation that is not allowed charges nothing). Settle it with `commit` or `refund`
        within `ttl` seconds, or it stays charged at the estimate."""
        request = reserve_request(domain, descriptors, estimate, ttl)
        try:
            response = await self._channel().reservations.Reserve(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return reservation_from_response(response)

    async def commit(
        self,
        reservation_or_id: Reservation | str,
        actual: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> int:
        """Settles the reservation at `actual` (the difference from the estimate is charged,
        or given back); again with the same `actual` it answers the same."""
        check_amount(actual, "actual")
        request = admin_pb.CommitRequest(id=reservation_id(reservation_or_id), actual=actual)
        try:
            response = await self._channel().reservations.Commit(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return int(response.charged)

    async def refund(
        self,
        reservation_or_id: Reservation | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> int:
        """Gives the whole estimate back."""
        request = admin_pb.RefundRequest(id=reservation_id(reservation_or_id))
        try:
            response = await self._channel().reservations.Refund(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return int(response.charged)

    @contextlib.asynccontextmanager
    async def reservation(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        estimate: int,
        ttl: float = DEFAULT_RESERVATION_TTL_S,
    ) -> AsyncIterator[Reservation]:
        """`async with client.reservation(...) as r: ...; r.commit(actual)`: reserves on
        entry; on exit commits what `r.commit` was given, or refunds the estimate (also when
        the block raised before it). Check `r.allowed` inside: a reservation that was not
        allowed has nothing to settle."""
        reserved = await self.reserve(domain, descriptors, estimate, ttl)
        try:
            yield reserved
        finally:
            if reserved.allowed:
                if reserved.actual is None:
                    await self.refund(reserved)
                else:
                    await self.commit(reserved, reserved.actual)

    async def acquire(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> Lease:
        """Takes a place on every descriptor a concurrency rule (`algorithm: concurrency`)
        matches, when each has room; `release` it when the work is done, or it ends by the
        rule's `lease_ttl_s`. A lease that is not allowed holds nothing."""
        request = acquire_request(domain, descriptors)
        try:
            response = await self._channel().reservations.Acquire(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return lease_from_response(response)

    async def release(
        self,
        lease_or_id: Lease | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, also sent to the server
    ) -> bool:
        """Ends the lease; whether it was still held (not released before, nor ended by TTL)."""
        request = release_request(lease_or_id)
        try:
            response = await self._channel().reservations.Release(
                request, timeout=self.options.timeout_for(timeout)
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        return bool(response.released)

    @contextlib.asynccontextmanager
    async def lease(
        self, domain: str, descriptors: Sequence[DescriptorLike]
    ) -> AsyncIterator[Lease]:
        """`async with client.lease(...) as lease: if lease.allowed: ...`: acquires on entry,
        releases on exit (also when the block raised)."""
        acquired = await self.acquire(domain, descriptors)
        try:
            yield acquired
        finally:
            if acquired.allowed:
                await self.release(acquired)

    async def connect(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - returns False
        """Connects now (e.g. in the app's lifespan startup) so that the first check does not pay
        for it; returns whether ratelimitd could be reached within `timeout` seconds. Optional."""
        try:
            await asyncio.wait_for(self._channel().channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        current, self._current = self._current, None
        if current is not None and current.loop is asyncio.get_running_loop():
            await current.channel.close()

    async def __aenter__(self) -> AsyncRateLimitClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
