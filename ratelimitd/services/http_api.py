"""The HTTP endpoints: /healthcheck (ready), /livez (alive), /metrics, /rlconfig, POST /json."""

from __future__ import annotations

from collections.abc import Callable

from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format

from ratelimitd import metrics
from ratelimitd.errors import BackendError, InvalidRequest
from ratelimitd.limiter import Limiter
from ratelimitd.services.convert import decision_to_proto, request_from_proto
from ratelimitd.transport.http1 import Handler, Response, text

JSON = "application/json"


def routes(
    limiter: Limiter, not_ready_reason: Callable[[], str | None]
) -> dict[tuple[str, str], Handler]:
    async def healthcheck(_: bytes) -> Response:
        reason = not_ready_reason()
        return text(200, "OK") if reason is None else text(503, f"NOT READY: {reason}\n")

    async def livez(_: bytes) -> Response:
        """Answered while the process serves at all, with the backend down too: a restart
        does not bring Redis back, and restarting every replica at once helps nobody."""
        return text(200, "ALIVE")

    async def metrics_page(_: bytes) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition()

    async def rlconfig(_: bytes) -> Response:
        return text(200, "".join(f"{line}\n" for line in limiter.config.describe_rules()))

    async def json_check(body: bytes) -> Response:
        """envoyproxy/ratelimit's /json: protojson request in, response out, 429 when over."""
        try:
            request = json_format.Parse(body or b"{}", rls_pb2.RateLimitRequest())
            decision = await limiter.should_rate_limit(request_from_proto(request))
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            return text(400, f"bad request: {exc}\n")
        except InvalidRequest as exc:
            return text(400, f"invalid request: {exc}\n")
        except BackendError as exc:
            return text(503, f"rate-limit backend unavailable: {exc}\n")
        response = decision_to_proto(decision)
        status = 429 if response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT else 200
        return status, JSON, json_format.MessageToJson(response, indent=None).encode()

    return {
        ("GET", "/healthcheck"): healthcheck,
        ("GET", "/livez"): livez,
        ("GET", "/metrics"): metrics_page,
        ("GET", "/rlconfig"): rlconfig,
        ("POST", "/json"): json_check,
    }
