"""Acquire and Release in `ratelimitd.v1.RateLimitReservations`, over a real gRPC connection,
on both gRPC servers (issue 21, item 4)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.app import App
from ratelimitd.clock import FakeClock
from tests.integration.conftest import StartServer
from tests.integration.test_reservations_service import grpc_server, reservations

__all__ = ["grpc_server", "reservations"]  # fixtures, shared

RULES = """
domain: app
descriptors:
  - key: tenant
    rate_limit: {algorithm: concurrency, max_in_flight: 2, lease_ttl_s: 45}
"""
Stubs = Callable[[App], pb_grpc.RateLimitReservationsStub]


def acquire(tenant: str) -> pb.AcquireRequest:
    return pb.AcquireRequest(
        domain="app", descriptors=[pb.Descriptor(entries=[pb.Entry(key="tenant", value=tenant)])]
    )


async def test_acquire_until_full_then_release(
    start_server: StartServer, reservations: Stubs
) -> None:
    clock = FakeClock(1_700_000_100.0)
    stub = reservations(await start_server(RULES, clock=clock))
    first = await stub.Acquire(acquire("a"))
    second = await stub.Acquire(acquire("a"))
    assert first.allowed and second.allowed and first.id != second.id
    assert first.ttl.seconds == 45
    clock.advance(15)
    full = await stub.Acquire(acquire("a"))
    assert not full.allowed and full.id == "" and full.retry_after.seconds == 30
    assert (await stub.Release(pb.ReleaseRequest(id=first.id))).released
    assert not (await stub.Release(pb.ReleaseRequest(id=first.id))).released
    assert (await stub.Acquire(acquire("a"))).allowed


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("garbage id", "not a lease id"),
        ("no id", "not a lease id"),
        ("no descriptors", "descriptors must not be empty"),
        ("no domain", "domain must not be empty"),
    ],
)
async def test_bad_calls_are_invalid_argument(
    start_server: StartServer, reservations: Stubs, call: str, message: str
) -> None:
    stub = reservations(await start_server(RULES))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if call == "garbage id":
            await stub.Release(pb.ReleaseRequest(id="x.!!"))
        elif call == "no id":
            await stub.Release(pb.ReleaseRequest())
        elif call == "no descriptors":
            await stub.Acquire(pb.AcquireRequest(domain="app"))
        else:
            await stub.Acquire(pb.AcquireRequest(descriptors=acquire("a").descriptors))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raised.value.details() or "")
    assert (await stub.Acquire(acquire("still-serving"))).allowed
