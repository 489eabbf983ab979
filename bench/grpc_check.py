"""A Python gRPC client: checks each target's answers before loading it, prefills keys."""

from __future__ import annotations

import asyncio

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from bench.payloads import MAX_DESCRIPTORS, KeySpace, request

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
PREFILL_ATTEMPTS = 5


class CheckFailed(RuntimeError):
    pass


def verify(address: str, space: KeySpace, limited: bool, timeout: float = 10.0) -> None:
    """Raises CheckFailed unless the target answers like a rate limiter should.

    Every target must answer OK to an ordinary user. A rate limiter (`limited`) must also give
    one status with a limit per descriptor, and OVER_LIMIT to a cost above a hot user's limit.
    """
    with grpc.insecure_channel(address) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        ordinary = space.hot_keys  # the first ordinary user (or a hot one if all are hot)
        reply = stub.ShouldRateLimit(request(space, ordinary, MAX_DESCRIPTORS), timeout=timeout)
        if reply.overall_code != OK and ordinary < space.keys:
            raise CheckFailed(f"{address}: an ordinary user got {reply}")
        if not limited:
            return
        if len(reply.statuses) != MAX_DESCRIPTORS or not all(
            status.current_limit.requests_per_unit > 0 for status in reply.statuses
        ):
            raise CheckFailed(
                f"{address}: expected {MAX_DESCRIPTORS} limited statuses, got {reply}"
            )
        if space.hot_keys:
            over = stub.ShouldRateLimit(request(space, 0, 1, hits=1_000_001), timeout=timeout)
            if over.overall_code != OVER_LIMIT:
                raise CheckFailed(f"{address}: a cost over a hot user's limit got {over}")


async def _prefill(address: str, space: KeySpace, descriptors: int, concurrency: int) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        queue = iter(range(space.keys))
        answered = 0

        async def worker() -> None:
            nonlocal answered
            for index in queue:
                for attempt in range(PREFILL_ATTEMPTS):
                    try:
                        await stub.ShouldRateLimit(request(space, index, descriptors), timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        # a busy machine can push Redis past ratelimitd's timeout: try again
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        if attempt + 1 == PREFILL_ATTEMPTS:
                            raise CheckFailed(
                                f"{address}: prefill failed: {exc.details()}"
                            ) from exc
                        await asyncio.sleep(0.05)
                    else:
                        answered += 1
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return answered


def prefill(address: str, space: KeySpace, concurrency: int = 32) -> int:
    """One hit on every counter of the key space, so they are all live; returns the calls."""
    return asyncio.run(_prefill(address, space, MAX_DESCRIPTORS, concurrency))
