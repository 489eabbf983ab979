"""Envoy's `RateLimitService`: request bytes in, limiter, response bytes out, errors as status
codes.

This is the hot path of every request Envoy forwards, so it skips protobuf messages both
ways: bodies are prepared once per distinct body (`PreparedRequests`) and answers encoded
straight to bytes (`ResponseEncoder`).
"""

from __future__ import annotations

import time

import grpc

from ratelimitd import metrics
from ratelimitd.errors import BackendError, InvalidRequest
from ratelimitd.limiter import Limiter
from ratelimitd.services.encode import ResponseEncoder
from ratelimitd.services.prepared import PreparedRequests
from ratelimitd.services.status import status_of

_LATENCY = metrics.HistogramTally(metrics.REQUEST_LATENCY.labels("ShouldRateLimit"))


class RateLimitServicer:
    """grpc.aio cancels a handler when its caller's deadline passes; the cancellation reaches
    the handler's place in the backend's batch queue, which is then skipped, never sent."""

    def __init__(
        self, limiter: Limiter, requests: PreparedRequests, encoder: ResponseEncoder
    ) -> None:
        self.limiter = limiter
        self.requests = requests
        self.encoder = encoder

    async def ShouldRateLimit(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        try:
            decision = await self.limiter.decide(self.requests.prepare(body))
        except (InvalidRequest, BackendError) as exc:
            await context.abort(*status_of(exc))
        response = self.encoder.response(decision)
        _LATENCY.observe(time.perf_counter() - started)
        return response
