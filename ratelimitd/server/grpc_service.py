"""Envoy's `RateLimitService`: protobuf in, limiter, protobuf out, errors as status codes."""

from __future__ import annotations

import time

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimitd import metrics
from ratelimitd.limiter import Limiter
from ratelimitd.logs import bind_request
from ratelimitd.server.convert import decision_to_proto, request_from_proto
from ratelimitd.server.handlers import refuse_malformed
from ratelimitd.server.status import grpc_status

_LATENCY = metrics.REQUEST_LATENCY.labels("ShouldRateLimit")


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """grpc.aio cancels a handler when its caller's deadline passes; the cancellation reaches
    the handler's place in the backend's batch queue, which is then skipped, never sent."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        await refuse_malformed(request, context)
        bind_request(rpc="ShouldRateLimit", domain=request.domain)
        async with grpc_status(context):
            decision = await self.limiter.should_rate_limit(request_from_proto(request))
        response = decision_to_proto(decision)
        _LATENCY.observe(time.perf_counter() - started)
        return response
