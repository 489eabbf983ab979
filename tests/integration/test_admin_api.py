"""ratelimitd's own admin API on a real server, on memory and on real Redis, on both gRPC
servers."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ratelimitd import cli, query
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd.app import ENVOY_SERVICE, App
from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.services.admin_service import SERVICE_NAME as ADMIN_SERVICE
from tests.integration.conftest import StartServer
from tests.integration.test_grpc_server import OK, OVER, rl_request
from tests.servers.redis import RedisServer

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
RULES = """
domain: app
descriptors:
  - key: route
    value: login
    descriptors:
      - key: ip
        rate_limit: {name: login, unit: minute, unit_multiplier: 15, requests_per_unit: 5}
  - key: api_key
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20}
      - {name: per_day, unit: day, requests_per_unit: 1000}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: sliding_window}
  - key: tokens
    rate_limit: {name: tokens, unit: minute, requests_per_unit: 1000, charge: always}
"""


def login(ip: str) -> list[tuple[str, str]]:
    return [("route", "login"), ("ip", ip)]


def admin_descriptors(*entries_list: list[tuple[str, str]]) -> list[pb.Descriptor]:
    return [
        pb.Descriptor(entries=[pb.Entry(key=k, value=v) for k, v in entries])
        for entries in entries_list
    ]


@pytest.fixture(params=["native", "grpcio"])
def grpc_server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    yield RedisBackend(RedisOptions(url=server.url, timeout_s=5.0))


@pytest.fixture
async def app(start_server: StartServer, backend: Backend) -> App:
    return await start_server(RULES, backend=backend, admin_token=TOKEN)


async def test_reset_restores_exactly_the_matched_counters(app: App, channel_to) -> None:
    stub = channel_to(app)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        for ip in ("1.1.1.1", "2.2.2.2"):
            codes = [
                (await stub.ShouldRateLimit(rl_request(login(ip), domain="app"))).overall_code
                for _ in range(6)
            ]
            assert codes == [OK] * 5 + [OVER]
        reply = await admin.Reset(
            pb.ResetRequest(domain="app", descriptors=admin_descriptors(login("1.1.1.1"))),
            metadata=AUTH,
        )
        assert reply.cleared == 1
        # the reset IP has its five attempts back, the other is still locked out
        codes = [
            (await stub.ShouldRateLimit(rl_request(login("1.1.1.1"), domain="app"))).overall_code
            for _ in range(6)
        ]
        assert codes == [OK] * 5 + [OVER]
        assert (
            await stub.ShouldRateLimit(rl_request(login("2.2.2.2"), domain="app"))
        ).overall_code == OVER
        # nothing to clear: zero, not an error
        reply = await admin.Reset(
            pb.ResetRequest(domain="app", descriptors=admin_descriptors(login("9.9.9.9"))),
            metadata=AUTH,
        )
        assert reply.cleared == 0


async def test_reset_clears_every_limit_and_algorithm(app: App, channel_to) -> None:
    stub = channel_to(app)
    key = [("api_key", "k1")]
    for _ in range(20):
        await stub.ShouldRateLimit(rl_request(key, domain="app"))
    await stub.ShouldRateLimit(rl_request([("sliding", "s")], domain="app"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        reply = await admin.Reset(
            pb.ResetRequest(domain="app", descriptors=admin_descriptors(key, [("sliding", "s")])),
            metadata=AUTH,
        )
        assert reply.cleared == 3  # the token bucket, the daily window and the sliding window
        states = (
            await admin.Peek(
                pb.PeekRequest(domain="app", descriptors=admin_descriptors(key)), metadata=AUTH
            )
        ).states
        assert [(s.name, s.remaining) for s in states] == [("per_second", 20), ("per_day", 1000)]


async def test_peek_reports_without_consuming(app: App, channel_to) -> None:
    stub = channel_to(app)
    key = [("api_key", "peeked")]
    for _ in range(5):
        await stub.ShouldRateLimit(rl_request(key, domain="app"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        request = pb.PeekRequest(
            domain="app", descriptors=admin_descriptors(key, [("unknown", "x")])
        )
        replies = [await admin.Peek(request, metadata=AUTH) for _ in range(1000)]
    assert all(reply == replies[0] or _same_but_time(reply, replies[0]) for reply in replies)
    per_second, per_day = replies[-1].states
    assert (per_second.descriptor_index, per_second.rule, per_second.algorithm) == (
        0,
        "api_key",
        "token_bucket",
    )
    assert (per_second.requests_per_unit, per_second.unit, per_second.capacity) == (
        10,
        "second",
        20,
    )
    assert (
        per_day.name == "per_day"
        and per_day.remaining == 995
        and per_day.algorithm == "fixed_window"
    )
    assert not per_day.over_limit
    assert 0 < per_day.reset_after.ToTimedelta().total_seconds() <= 86400
    reply = await stub.ShouldRateLimit(rl_request(key, domain="app"))
    assert reply.overall_code == OK
    # 1,000 peeks later, the daily window has exactly one more hit: the real one
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        states = (
            await admin.Peek(
                pb.PeekRequest(domain="app", descriptors=admin_descriptors(key)), metadata=AUTH
            )
        ).states
    assert states[1].remaining == 994


def _same_but_time(a: pb.PeekResponse, b: pb.PeekResponse) -> bool:
    """Equal apart from the clock moving on (token refill, time until reset)."""
    strip = [(s.name, s.rule, s.algorithm, s.requests_per_unit, s.over_limit) for s in a.states]
    return strip == [
        (s.name, s.rule, s.algorithm, s.requests_per_unit, s.over_limit) for s in b.states
    ]


async def test_a_thousand_peeks_consume_nothing(app: App, channel_to) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        request = pb.PeekRequest(domain="app", descriptors=admin_descriptors(login("4.4.4.4")))
        for _ in range(1000):
            (state,) = (await admin.Peek(request, metadata=AUTH)).states
            assert state.remaining == 5 and not state.over_limit
    reply = await channel_to(app).ShouldRateLimit(rl_request(login("4.4.4.4"), domain="app"))
    assert reply.statuses[0].limit_remaining == 4


async def test_peek_shows_over_limit(app: App, channel_to) -> None:
    stub = channel_to(app)
    for _ in range(5):
        await stub.ShouldRateLimit(rl_request(login("3.3.3.3"), domain="app"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        reply = await admin.Peek(
            pb.PeekRequest(domain="app", descriptors=admin_descriptors(login("3.3.3.3"))),
            metadata=AUTH,
        )
    (state,) = reply.states
    assert state.over_limit and state.remaining == 0 and state.unit_multiplier == 15


async def test_get_config(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        reply = await admin.GetConfig(pb.GetConfigRequest(), metadata=AUTH)
    assert list(reply.domains) == ["app"]
    assert reply.content_hash == app.config.content_hash and len(reply.content_hash) == 64
    assert list(reply.sources) == ["test.yaml"]
    assert "app.route_login.ip: 5 per 15 minutes (fixed_window) name=login\n" in reply.rules
    assert "app.tokens: 1000 per minute (fixed_window, charge always) name=tokens\n" in reply.rules
    assert reply.loaded_at.seconds > 1_700_000_000


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", TOKEN),),
        (("authorization", "Basic " + TOKEN),),
    ],
    ids=["missing", "wrong", "no-scheme", "other-scheme"],
)
async def test_missing_or_wrong_token_is_unauthenticated(
    app: App, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        for call in (
            admin.Reset(
                pb.ResetRequest(domain="app", descriptors=admin_descriptors(login("x"))),
                metadata=metadata,
            ),
            admin.Peek(
                pb.PeekRequest(domain="app", descriptors=admin_descriptors(login("x"))),
                metadata=metadata,
            ),
            admin.GetConfig(pb.GetConfigRequest(), metadata=metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "missing or wrong 'authorization: Bearer' token"


async def test_no_token_configured_refuses_everything(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start_server(RULES)
    assert "the admin API refuses every call" in caplog.text
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.GetConfig(pb.GetConfigRequest(), metadata=(("authorization", "Bearer "),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin API is disabled" in caught.value.details()


async def test_token_file(start_server: StartServer, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    app = await start_server(RULES, admin_token_file=str(token_file))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        await admin.GetConfig(
            pb.GetConfigRequest(), metadata=(("authorization", "Bearer from-file"),)
        )
        token_file.write_text("rotated")
        with pytest.raises(grpc.aio.AioRpcError):
            await admin.GetConfig(
                pb.GetConfigRequest(), metadata=(("authorization", "Bearer from-file"),)
            )
        await admin.GetConfig(
            pb.GetConfigRequest(), metadata=(("authorization", "Bearer rotated"),)
        )


async def test_admin_bad_requests_are_invalid(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        admin = pb_grpc.RateLimitAdminStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.Reset(
                pb.ResetRequest(domain="", descriptors=admin_descriptors(login("x"))), metadata=AUTH
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "domain must not be empty"


async def test_reflection_lists_both_services(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name async for reply in replies for s in reply.list_services_response.service}
    assert {ENVOY_SERVICE, ADMIN_SERVICE, "grpc.health.v1.Health"} <= names


async def test_health_follows_redis(start_server: StartServer, redis_server: RedisServer) -> None:
    backend = RedisBackend(RedisOptions(url=redis_server.url, timeout_s=0.2))
    app = await start_server(RULES, backend=backend, health_interval_s=0.05)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )

    async def statuses() -> set[int]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            return {
                (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
                for name in ("", ENVOY_SERVICE, ADMIN_SERVICE)
            }

    async def wait_for(status: int) -> None:
        for _ in range(200):
            if await statuses() == {status}:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"health never became {status}")

    await wait_for(serving)
    redis_server.kill()
    await wait_for(not_serving)
    redis_server.start()
    await wait_for(serving)


async def test_query_command_exit_codes(app: App) -> None:
    addr = f"127.0.0.1:{app.grpc_port}"

    def query(*extra: str) -> int:
        return cli.main(["query", "--addr", addr, "--domain", "app", *extra])

    ip = "route=login,ip=7.7.7.7"
    assert [await asyncio.to_thread(query, "--descriptor", ip) for _ in range(6)] == [0] * 5 + [1]
    assert await asyncio.to_thread(query, "--descriptor", ip, "--peek", "--token", TOKEN) == 1
    assert await asyncio.to_thread(query, "--descriptor", ip, "--reset", "--token", TOKEN) == 0
    assert await asyncio.to_thread(query, "--descriptor", ip, "--peek", "--token", TOKEN) == 0
    assert await asyncio.to_thread(query, "--descriptor", ip, "--peek", "--token", "wrong") == 2
    assert await asyncio.to_thread(query, "--descriptor", "nonsense") == 2
    assert await asyncio.to_thread(query, "--descriptor", "x=y", "--hits", "3") == 0


async def test_query_shows_a_multiplied_unit_as_peek_does(app: App) -> None:
    """A 5-per-15-minutes rule reads `5/15 minutes` in both, not `5/minute` (issue 17)."""

    def output(*extra: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        args = ["--addr", f"127.0.0.1:{app.grpc_port}", "--domain", "app", *extra]
        parser = argparse.ArgumentParser()
        query.add_arguments(parser)
        query.run(parser.parse_args(args), out=out, err=err)
        assert not err.getvalue()
        return out.getvalue()

    ip = "route=login,ip=8.8.4.4"
    checked = await asyncio.to_thread(output, "--descriptor", ip)
    assert f"{ip}: OK limit 5/15 minutes (login), remaining 4," in checked
    peeked = await asyncio.to_thread(output, "--descriptor", ip, "--peek", "--token", TOKEN)
    assert "5/15 minutes: remaining 4" in peeked
    single = await asyncio.to_thread(output, "--descriptor", "api_key=q")
    assert re.search(r"api_key=q: OK limit \d+/(second|day) \(per_", single), single


def test_query_output(capsys: pytest.CaptureFixture[str]) -> None:
    from ratelimitd.query import parse_descriptor

    assert parse_descriptor("a=1,b=x=y") == [("a", "1"), ("b", "x=y")]
    assert parse_descriptor("k=") == [("k", "")]
    with pytest.raises(ValueError, match="expected K=V"):
        parse_descriptor("=v")
