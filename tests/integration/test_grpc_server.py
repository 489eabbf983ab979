"""ShouldRateLimit over a real gRPC connection, as Envoy calls it, on both gRPC servers."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ratelimitd.app import ENVOY_SERVICE
from ratelimitd.clock import FakeClock
from tests.integration.conftest import StartServer

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: path
    value: /export*
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: internal
    rate_limit: {unlimited: true}
  - key: route
    value: admin
    rate_limit: {name: admin, unit: hour, requests_per_unit: 1}
  - key: route
    value: admin-bulk
    rate_limit: {unit: hour, requests_per_unit: 10, replaces: [{name: admin}]}
"""


def rl_request(
    *descriptors: list[tuple[str, str]] | ratelimit_pb2.RateLimitDescriptor,
    domain: str = "edge",
    hits: int = 0,
) -> rls_pb2.RateLimitRequest:
    built = [
        d
        if isinstance(d, ratelimit_pb2.RateLimitDescriptor)
        else ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d]
        )
        for d in descriptors
    ]
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=built, hits_addend=hits)


@pytest.fixture(params=["native", "grpcio"])
def grpc_server(request: pytest.FixtureRequest) -> str:
    """Every test here runs on ratelimitd's own server and on grpc.aio."""
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_100.0)


async def test_limit_reached_exactly_and_window_rolls_over(
    start_server: StartServer, channel_to, clock: FakeClock
) -> None:
    stub = channel_to(await start_server(RULES, clock=clock))
    req = rl_request([("remote_address", "10.0.0.1")])
    responses = [await stub.ShouldRateLimit(req) for _ in range(6)]
    assert [r.overall_code for r in responses] == [OK] * 5 + [OVER]
    assert [r.statuses[0].limit_remaining for r in responses] == [4, 3, 2, 1, 0, 0]
    status = responses[0].statuses[0]
    assert status.code == OK
    assert status.current_limit.requests_per_unit == 5
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
    assert status.duration_until_reset.ToTimedelta().total_seconds() == 1.0
    assert responses[5].statuses[0].code == OVER
    clock.advance(1)
    assert (await stub.ShouldRateLimit(req)).overall_code == OK


async def test_no_match_and_unknown_domain_answer_ok_without_limit(
    start_server: StartServer, channel_to
) -> None:
    stub = channel_to(await start_server(RULES))
    for req in (
        rl_request([("nothing", "x")]),
        rl_request([("remote_address", "1")], domain="other"),
    ):
        response = await stub.ShouldRateLimit(req)
        assert response.overall_code == OK
        assert len(response.statuses) == 1
        assert not response.statuses[0].HasField("current_limit")


async def test_hits_addend_request_and_descriptor_level(
    start_server: StartServer, channel_to, clock: FakeClock
) -> None:
    stub = channel_to(await start_server(RULES, clock=clock))  # (a per-second limit)
    response = await stub.ShouldRateLimit(rl_request([("remote_address", "h")], hits=4))
    assert response.statuses[0].limit_remaining == 1
    probe = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="h")]
    )
    probe.hits_addend.value = 0
    for _ in range(3):
        response = await stub.ShouldRateLimit(rl_request(probe, hits=1))
        assert response.overall_code == OK and response.statuses[0].limit_remaining == 1
    response = await stub.ShouldRateLimit(rl_request([("remote_address", "h")], hits=2))
    assert response.overall_code == OVER


async def test_limit_override(start_server: StartServer, channel_to) -> None:
    stub = channel_to(await start_server(RULES))
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="o")],
        limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=2, unit=2),
    )
    responses = [await stub.ShouldRateLimit(rl_request(descriptor)) for _ in range(3)]
    assert [r.overall_code for r in responses] == [OK, OK, OVER]
    assert responses[0].statuses[0].current_limit.requests_per_unit == 2
    assert responses[0].statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE


async def test_shadow_mode_unlimited_and_replaces(start_server: StartServer, channel_to) -> None:
    stub = channel_to(await start_server(RULES))
    shadow = [await stub.ShouldRateLimit(rl_request([("path", "/export/all")])) for _ in range(3)]
    assert all(r.overall_code == OK for r in shadow)
    assert [r.statuses[0].limit_remaining for r in shadow] == [0, 0, 0]

    unlimited = await stub.ShouldRateLimit(rl_request([("internal", "probe")]))
    assert unlimited.overall_code == OK
    assert unlimited.statuses[0].limit_remaining == 2**32 - 1

    both = rl_request([("route", "admin")], [("route", "admin-bulk")])
    for _ in range(3):
        response = await stub.ShouldRateLimit(both)
        assert response.overall_code == OK
        assert not response.statuses[0].HasField("current_limit")
    assert (await stub.ShouldRateLimit(rl_request([("route", "admin")]))).overall_code == OK


async def test_global_shadow_mode(start_server: StartServer, channel_to, clock: FakeClock) -> None:
    # a fake clock: 7 calls to a per-second limit must not straddle a second
    stub = channel_to(await start_server(RULES, shadow_mode=True, clock=clock))
    req = rl_request([("remote_address", "g")])
    responses = [await stub.ShouldRateLimit(req) for _ in range(7)]
    assert all(r.overall_code == OK for r in responses)
    assert responses[-1].statuses[0].code == OVER


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (rl_request([("k", "v")], domain=""), "domain must not be empty"),
        (rl_request(), "descriptors must not be empty"),
        (rl_request([("k", "v")], []), "descriptors[1] has no entries"),
        (rl_request([("", "v")]), "descriptors[0].entries[0] has an empty key"),
        (
            rl_request(
                ratelimit_pb2.RateLimitDescriptor(
                    entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="k", value="v")],
                    limit=ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=1),
                )
            ),
            "descriptors[0].limit has unit 0: expected SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR",
        ),
    ],
)
async def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(
    start_server: StartServer, channel_to, req: rls_pb2.RateLimitRequest, message: str
) -> None:
    stub = channel_to(await start_server(RULES))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ShouldRateLimit(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert (
        await stub.ShouldRateLimit(rl_request([("remote_address", "after")]))
    ).overall_code == OK


async def test_an_oversized_message_is_refused(start_server: StartServer, channel_to) -> None:
    stub = channel_to(await start_server(RULES, max_message_bytes=64 * 1024))
    huge = rl_request([("remote_address", "x" * 100_000)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ShouldRateLimit(huge)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.ShouldRateLimit(rl_request([("remote_address", "ok")]))).overall_code == OK


async def test_concurrent_calls_admit_exactly_the_limit(
    start_server: StartServer, channel_to, clock: FakeClock
) -> None:
    # a frozen clock: the 300 calls must not straddle two one-second windows
    stub = channel_to(await start_server(RULES, clock=clock))
    req = rl_request([("remote_address", "burst")])
    responses = await asyncio.gather(*(stub.ShouldRateLimit(req) for _ in range(300)))
    assert sum(r.overall_code == OK for r in responses) == 5


async def test_health_reflection_and_http_healthcheck(start_server: StartServer) -> None:
    app = await start_server(RULES)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", ENVOY_SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for reply in replies for s in reply.list_services_response.service]
        assert ENVOY_SERVICE in names and "grpc.health.v1.Health" in names

    def fetch(path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http_port}{path}", timeout=5) as reply:
            return reply.status, reply.read()

    assert await asyncio.to_thread(fetch, "/healthcheck") == (200, b"OK")
