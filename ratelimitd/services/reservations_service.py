"""ratelimitd's own `RateLimitReservations` service: Reserve, Commit and Refund
(reservations.py), Acquire and Release (leases.py), with no token, as Envoy's
RateLimitService."""

from __future__ import annotations

import grpc

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.leases import Leases
from ratelimitd.model import Descriptor
from ratelimitd.reservations import DEFAULT_TTL_S, Reservations
from ratelimitd.services.admin_service import duration
from ratelimitd.services.handlers import refuse_malformed
from ratelimitd.services.status import grpc_status

SERVICE_NAME = "ratelimitd.v1.RateLimitReservations"


class ReservationsServicer(pb_grpc.RateLimitReservationsServicer):
    def __init__(self, reservations: Reservations, leases: Leases) -> None:
        self.reservations = reservations
        self.leases = leases

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        await refuse_malformed(request, context)
        ttl = (
            request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else DEFAULT_TTL_S
        )
        async with grpc_status(context):
            reserved = await self.reservations.reserve(
                request.domain, descriptors_of(request), request.estimate, ttl
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

    async def Acquire(
        self, request: pb.AcquireRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcquireResponse:
        await refuse_malformed(request, context)
        async with grpc_status(context):
            lease = await self.leases.acquire(request.domain, descriptors_of(request))
        return pb.AcquireResponse(
            id=lease.id,
            allowed=lease.allowed,
            retry_after=duration(lease.retry_after),
            ttl=duration(lease.ttl_s),
        )

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResponse:
        await refuse_malformed(request, context)
        async with grpc_status(context):
            released = await self.leases.release(request.id)
        return pb.ReleaseResponse(released=released)


def descriptors_of(request: pb.ReserveRequest | pb.AcquireRequest) -> tuple[Descriptor, ...]:
    return tuple(
        Descriptor(tuple((entry.key, entry.value) for entry in descriptor.entries))
        for descriptor in request.descriptors
    )
