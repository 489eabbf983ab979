"""`ratelimitd.v1.RateLimitReservations` over a real gRPC connection, on both gRPC servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.app import App
from ratelimitd.clock import FakeClock
from tests.integration.conftest import StartServer

RULES = """
domain: llm
descriptors:
  - key: key
    rate_limit: {unit: minute, requests_per_unit: 1000, charge: always}
"""


@pytest.fixture(params=["native", "grpcio"])
def grpc_server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def reservations() -> AsyncIterator[Callable[[App], pb_grpc.RateLimitReservationsStub]]:
    channels: list[grpc.aio.Channel] = []

    def stub(app: App) -> pb_grpc.RateLimitReservationsStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        channels.append(channel)
        return pb_grpc.RateLimitReservationsStub(channel)  # type: ignore[no-untyped-call]

    yield stub
    for channel in channels:
        await channel.close()


def reserve(key: str, estimate: int, ttl_s: int = 60) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        domain="llm",
        descriptors=[pb.Descriptor(entries=[pb.Entry(key="key", value=key)])],
        estimate=estimate,
        ttl=Duration(seconds=ttl_s),
    )


async def test_reserve_commit_and_refund(
    start_server: StartServer, reservations: Callable[[App], pb_grpc.RateLimitReservationsStub]
) -> None:
    stub = reservations(await start_server(RULES, clock=FakeClock(1_700_000_100.0)))
    first = await stub.Reserve(reserve("a", 600))
    assert first.allowed and first.id
    denied = await stub.Reserve(reserve("a", 600))  # 600 more does not fit in 400
    assert not denied.allowed and denied.id == "" and denied.retry_after.seconds == 60
    assert (await stub.Commit(pb.CommitRequest(id=first.id, actual=100))).charged == 100
    second = await stub.Reserve(reserve("a", 600))  # 900 left now
    assert second.allowed
    assert (await stub.Refund(pb.RefundRequest(id=second.id))).charged == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("unknown", "unknown or expired reservation"),
        ("twice", "already settled"),
        ("too big", "above the largest limit"),
        ("no estimate", "estimate must be at least 1"),
    ],
)
async def test_bad_calls_are_invalid_argument(
    start_server: StartServer,
    reservations: Callable[[App], pb_grpc.RateLimitReservationsStub],
    call: str,
    message: str,
) -> None:
    stub = reservations(await start_server(RULES))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if call == "unknown":
            await stub.Commit(pb.CommitRequest(id="nope", actual=1))
        elif call == "twice":
            reserved = await stub.Reserve(reserve("b", 10))
            await stub.Commit(pb.CommitRequest(id=reserved.id, actual=5))
            await stub.Commit(pb.CommitRequest(id=reserved.id, actual=6))
        elif call == "too big":
            await stub.Reserve(reserve("b", 1001))
        else:
            await stub.Reserve(reserve("b", 0))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raised.value.details() or "")
