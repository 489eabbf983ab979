"""`ratelimitd.v1.RateLimitBatch/ShouldRateLimitBatch` over a real gRPC connection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.app import App
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import FakeClock
from ratelimitd.services.batch_service import MAX_BATCH
from tests.integration.conftest import StartServer
from tests.integration.test_grpc_server import RULES, rl_request
from tests.servers.redis import RedisServer, free_port

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


@pytest.fixture
async def batch_stub():
    channels: list[grpc.aio.Channel] = []

    def stub(app: App) -> pb_grpc.RateLimitBatchStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        channels.append(channel)
        return pb_grpc.RateLimitBatchStub(channel)  # type: ignore[no-untyped-call]

    yield stub
    for channel in channels:
        await channel.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_100.0)


def batch(*requests: rls_pb2.RateLimitRequest | bytes) -> pb.ShouldRateLimitBatchRequest:
    return pb.ShouldRateLimitBatchRequest(
        requests=[r if isinstance(r, bytes) else r.SerializeToString() for r in requests]
    )


def responses(reply: pb.ShouldRateLimitBatchResponse) -> list[rls_pb2.RateLimitResponse]:
    assert all(result.error_code == 0 for result in reply.results)
    return [rls_pb2.RateLimitResponse.FromString(result.response) for result in reply.results]


async def test_each_request_is_decided_as_if_alone(
    start_server: StartServer, channel_to, batch_stub, clock: FakeClock
) -> None:
    requests = [
        rl_request([("remote_address", "10.0.0.1")], hits=2),
        rl_request([("remote_address", "10.0.0.1")], hits=2),
        rl_request([("remote_address", "10.0.0.1")], hits=2),  # 6 > 5: over
        rl_request([("path", "/export/a")], [("internal", "x")], hits=5),  # shadow, unlimited
        rl_request([("route", "admin")], [("route", "admin-bulk")], hits=1),  # replaces
        rl_request([("nothing", "matches")], hits=1),
    ]
    alone = channel_to(await start_server(RULES, clock=clock))
    expected = [await alone.ShouldRateLimit(request) for request in requests]
    together = batch_stub(await start_server(RULES, clock=clock))
    got = responses(await together.ShouldRateLimitBatch(batch(*requests)))
    assert [r.overall_code for r in got] == [OK, OK, OVER, OK, OK, OK]
    assert got == expected


async def test_an_invalid_request_fails_alone(start_server: StartServer, batch_stub) -> None:
    stub = batch_stub(await start_server(RULES))
    reply = await stub.ShouldRateLimitBatch(
        batch(
            rl_request([("remote_address", "a")], hits=1),
            b"\xff\xff\xff",
            rl_request([("remote_address", "a")], hits=1, domain=""),
            rl_request([("remote_address", "a")], hits=1),
        )
    )
    codes = [result.error_code for result in reply.results]
    assert codes == [0, INVALID_ARGUMENT, INVALID_ARGUMENT, 0]
    assert reply.results[1].error_message.startswith("malformed request")
    assert reply.results[2].error_message == "domain must not be empty"
    decided = [rls_pb2.RateLimitResponse.FromString(reply.results[i].response) for i in (0, 3)]
    assert [d.statuses[0].limit_remaining for d in decided] == [4, 3]


async def test_bad_batches_are_refused_and_the_server_keeps_serving(
    start_server: StartServer, batch_stub
) -> None:
    app = await start_server(RULES)
    stub = batch_stub(app)
    one = rl_request([("remote_address", "b")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ShouldRateLimitBatch(batch(*[one] * (MAX_BATCH + 1)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_BATCH}" in (caught.value.details() or "")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        raw = channel.unary_unary("/ratelimitd.v1.RateLimitBatch/ShouldRateLimitBatch")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\x0a\xff\xff\xff\xff")  # a body that is not a batch
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await stub.ShouldRateLimitBatch(batch())).results == []
    assert responses(await stub.ShouldRateLimitBatch(batch(one)))[0].overall_code == OK


async def test_concurrent_batches_admit_exactly_the_limit_on_redis(
    start_server: StartServer, batch_stub, redis_server: RedisServer
) -> None:
    rules = """
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 50}
"""
    backend = RedisBackend(RedisOptions(url=redis_server.url, timeout_s=2.0))
    stub = batch_stub(await start_server(rules, backend=backend))
    one = rl_request([("user", "u1")], hits=1)
    replies = await asyncio.gather(
        *(stub.ShouldRateLimitBatch(batch(*[one] * 40)) for _ in range(5))
    )
    codes = [r.overall_code for reply in replies for r in responses(reply)]
    assert codes.count(OK) == 50 and codes.count(OVER) == 150


@pytest.mark.parametrize("mode", ["error", "allow", "deny"])
async def test_a_backend_failure_answers_each_request_by_the_failure_mode(
    start_server: StartServer, batch_stub, mode: str
) -> None:
    backend = RedisBackend(RedisOptions(url=f"redis://127.0.0.1:{free_port()}", timeout_s=0.1))
    stub = batch_stub(await start_server(RULES, backend=backend, backend_failure=mode))
    reply = await stub.ShouldRateLimitBatch(
        batch(
            rl_request([("remote_address", "c")], hits=1),
            rl_request([("nothing", "matches")], hits=1),  # nothing to count: decided anyway
        )
    )
    limited, unmatched = reply.results
    assert rls_pb2.RateLimitResponse.FromString(unmatched.response).overall_code == OK
    if mode == "error":
        assert limited.error_code == UNAVAILABLE
        assert "backend unavailable" in limited.error_message
    else:
        code = rls_pb2.RateLimitResponse.FromString(limited.response).overall_code
        assert code == (OK if mode == "allow" else OVER)


async def test_each_result_carries_its_limits_unit_multipliers(
    start_server: StartServer, batch_stub
) -> None:
    """Envoy's response has only a unit; a batch result also says 15 for "per 15 minutes"."""
    rules = """
    domain: edge
    descriptors:
      - key: ip
        rate_limit: {unit: minute, unit_multiplier: 15, requests_per_unit: 5}
      - key: user
        rate_limit: {unit: second, requests_per_unit: 5}
    """
    stub = batch_stub(await start_server(rules))
    reply = await stub.ShouldRateLimitBatch(
        batch(
            rl_request([("ip", "1")], [("user", "u")], [("none", "x")], hits=1, domain="edge"),
            rl_request([("user", "u")], hits=1, domain="edge"),
        )
    )
    assert [list(result.unit_multipliers) for result in reply.results] == [[15, 1, 0], []]
    assert len(responses(reply)[0].statuses) == 3
