"""ratelimitd's own `RateLimitAdmin` service: Reset, Peek and GetConfig, behind a bearer token."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.limiter import Limiter, LimitState
from ratelimitd.model import Descriptor, Request
from ratelimitd.services.handlers import refuse_malformed
from ratelimitd.services.status import grpc_status

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RateLimitAdmin"].full_name


def duration(seconds: float) -> Duration:
    whole = math.floor(seconds)
    return Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def request_from_proto(message: pb.ResetRequest | pb.PeekRequest) -> Request:
    descriptors = tuple(
        Descriptor(entries=tuple((entry.key, entry.value) for entry in descriptor.entries))
        for descriptor in message.descriptors
    )
    return Request(domain=message.domain, descriptors=descriptors)


def state_to_proto(state: LimitState) -> pb.LimitState:
    limit = state.limit
    return pb.LimitState(
        descriptor_index=state.descriptor_index,
        rule=state.rule.path,
        name=limit.name,
        algorithm=limit.algorithm.value,
        requests_per_unit=limit.requests_per_unit,
        unit=limit.unit.name.lower(),
        unit_multiplier=limit.unit_multiplier,
        capacity=limit.capacity,
        remaining=max(state.result.remaining, 0),
        reset_after=duration(max(state.result.reset_after, 0.0)),
        over_limit=not state.result.allowed,
        shadow_mode=state.rule.shadow_mode,
    )


class AdminServicer(pb_grpc.RateLimitAdminServicer):
    """Every call first checks `authorization: Bearer <token>` in constant time."""

    def __init__(self, limiter: Limiter, token: Callable[[], str]) -> None:
        self.limiter = limiter
        self._token = token

    async def _check_call(self, request: object, context: grpc.aio.ServicerContext) -> None:
        """The token first (a stranger learns nothing else), then that the request parsed."""
        expected = self._token()
        if not expected:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the admin API is disabled: set RATELIMITD_ADMIN_TOKEN or RATELIMITD_ADMIN_TOKEN_FILE",
            )
        given = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or wrong 'authorization: Bearer' token"
            )
        await refuse_malformed(request, context)

    async def Reset(
        self, request: pb.ResetRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetResponse:
        await self._check_call(request, context)
        async with grpc_status(context):
            cleared = await self.limiter.reset(request_from_proto(request))
        return pb.ResetResponse(cleared=cleared)

    async def Peek(
        self, request: pb.PeekRequest, context: grpc.aio.ServicerContext
    ) -> pb.PeekResponse:
        await self._check_call(request, context)
        async with grpc_status(context):
            states = await self.limiter.peek(request_from_proto(request))
        return pb.PeekResponse(states=[state_to_proto(state) for state in states])

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConfigResponse:
        await self._check_call(request, context)
        config = self.limiter.config
        loaded_at = Timestamp()
        loaded_at.FromNanoseconds(int(config.loaded_at * 1e9))
        return pb.GetConfigResponse(
            domains=sorted(config.domains),
            rules="".join(f"{line}\n" for line in config.describe_rules()),
            content_hash=config.content_hash,
            loaded_at=loaded_at,
            sources=list(config.sources),
        )
