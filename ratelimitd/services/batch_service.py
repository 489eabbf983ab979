"""ratelimitd's `RateLimitBatch`: many Envoy `ShouldRateLimit` decisions in one call.

Each encoded request is decided exactly as `ShouldRateLimit` would decide it alone; they
share one gRPC call and one trip to the backend. A request that is invalid, or that the
backend could not decide (in `error` mode), gets the status code `ShouldRateLimit` would have
answered in its own result, and the others are decided all the same.
"""

from __future__ import annotations

import time

import grpc

from ratelimitd import metrics
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd.errors import BackendError, InvalidRequest
from ratelimitd.limiter import Limiter, Prepared
from ratelimitd.model import Decision
from ratelimitd.services.encode import ResponseEncoder, length_delimited, varint
from ratelimitd.services.handlers import refuse_malformed
from ratelimitd.services.prepared import PreparedRequests
from ratelimitd.services.status import status_of

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RateLimitBatch"].full_name
MAX_BATCH = 1024

_LATENCY = metrics.HistogramTally(metrics.REQUEST_LATENCY.labels("ShouldRateLimitBatch"))
# Tags: ShouldRateLimitBatchResponse.results = 1; BatchResult.response = 1, .error_code = 2,
# .error_message = 3, .unit_multipliers = 4 (packed).
_RESULT = b"\x0a"
_RESPONSE = b"\x0a"
_ERROR_CODE = b"\x10"
_ERROR_MESSAGE = b"\x1a"
_UNIT_MULTIPLIERS = b"\x22"


class BatchServicer:
    def __init__(
        self, limiter: Limiter, requests: PreparedRequests, encoder: ResponseEncoder
    ) -> None:
        self.limiter = limiter
        self.requests = requests
        self.encoder = encoder

    async def ShouldRateLimitBatch(
        self, batch: pb.ShouldRateLimitBatchRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        started = time.perf_counter()
        await refuse_malformed(batch, context)
        if len(batch.requests) > MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(batch.requests)} requests: at most {MAX_BATCH} are allowed in one batch",
            )
        outcomes: list[Prepared | InvalidRequest] = []
        for body in batch.requests:
            try:
                outcomes.append(self.requests.prepare(body))
            except InvalidRequest as exc:
                outcomes.append(exc)
        decisions = iter(
            await self.limiter.decide_many([o for o in outcomes if isinstance(o, Prepared)])
        )
        results = (
            self._result(next(decisions) if isinstance(outcome, Prepared) else outcome)
            for outcome in outcomes
        )
        response = b"".join(length_delimited(_RESULT, result) for result in results)
        _LATENCY.observe(time.perf_counter() - started)
        return response

    def _result(self, outcome: Decision | InvalidRequest | BackendError) -> bytes:
        if isinstance(outcome, Decision):
            return length_delimited(_RESPONSE, self.encoder.response(outcome)) + unit_multipliers(
                outcome
            )
        code, message = status_of(outcome)
        return (
            _ERROR_CODE
            + varint(code.value[0])
            + length_delimited(_ERROR_MESSAGE, message.encode("utf-8", "replace"))
        )


def unit_multipliers(decision: Decision) -> bytes:
    """`BatchResult.unit_multipliers`, present only when some limit counts over several units."""
    multipliers = [0 if s.limit is None else s.limit.unit_multiplier for s in decision.statuses]
    if all(m <= 1 for m in multipliers):
        return b""
    return length_delimited(_UNIT_MULTIPLIERS, b"".join(varint(m) for m in multipliers))
