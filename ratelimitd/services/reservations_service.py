"""ratelimitd's own `RateLimitReservations` service: Reserve, Commit and Refund
(reservations.py), with no token, as Envoy's RateLimitService."""

from __future__ import annotations

import grpc

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.model import Descriptor
from ratelimitd.reservations import DEFAULT_TTL_S, Reservations
from ratelimitd.services.admin_service import duration
from ratelimitd.services.handlers import refuse_malformed
from ratelimitd.services.status import grpc_status

SERVICE_NAME = "ratelimitd.v1.RateLimitReservations"


class ReservationsServicer(pb_grpc.RateLimitReservationsServicer):
    def __init__(self, reservations: Reservations) -> None:
        self.reservations = reservations

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        await refuse_malformed(request, context)
        ttl = (
            request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else DEFAULT_TTL_S
        )
        descriptors = tuple(
            Descriptor(tuple((entry.key, entry.value) for entry in descriptor.entries))
            for descriptor in request.descriptors
        )
        async with grpc_status(context):
            reserved = await self.reservations.reserve(
                request.domain, descriptors, request.estimate, ttl
            )
        return pb.ReserveResponse(
            id=reserved.id, allowed=reserved.allowed, retry_after=duration(reserved.retry_after)
        )

    async def Commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext
    ) -> pb.SettleResponse:
        await refuse_malformed(request, context)
        async with grpc_status(context):
            charged = await self.reservations.commit(request.id, request.actual)
        return pb.SettleResponse(charged=charged)

    async def Refund(
        self, request: pb.RefundRequest, context: grpc.aio.ServicerContext
    ) -> pb.SettleResponse:
        await refuse_malformed(request, context)
        async with grpc_status(context):
            charged = await self.reservations.refund(request.id)
        return pb.SettleResponse(charged=charged)
