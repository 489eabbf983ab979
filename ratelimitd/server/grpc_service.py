"""Envoy's `RateLimitService`: protobuf in, limiter, protobuf out, errors as status codes."""

from __future__ import annotations

import logging

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimitd.errors import BackendError, InvalidRequest
from ratelimitd.limiter import Limiter
from ratelimitd.server.convert import decision_to_proto, request_from_proto

log = logging.getLogger(__name__)


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        try:
            decision = await self.limiter.should_rate_limit(request_from_proto(request))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except BackendError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"rate-limit backend unavailable: {exc}"
            )
        return decision_to_proto(decision)
