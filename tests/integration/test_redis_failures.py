"""Redis stopped, frozen and restarted under a running service: answered on purpose, never a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimitd.app import App
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from tests.integration.conftest import StartServer
from tests.integration.test_grpc_server import rl_request
from tests.servers.redis import RedisServer, free_port

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 1000}
"""
TIMEOUT_S = 0.1
# A generous bound for "answered within the timeout plus a small margin" on a shared machine.
ANSWER_BOUND_S = 1.5


async def start(
    start_server: StartServer, url: str, mode: str
) -> rls_pb2_grpc.RateLimitServiceStub:
    backend = RedisBackend(RedisOptions(url=url, timeout_s=TIMEOUT_S))
    app = await start_server(RULES, backend=backend, backend_failure=mode)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    return rls_pb2_grpc.RateLimitServiceStub(channel)


async def timed_call(stub: rls_pb2_grpc.RateLimitServiceStub) -> tuple[float, object]:
    """(seconds taken, response or the gRPC error)."""
    began = time.monotonic()
    try:
        reply: object = await stub.ShouldRateLimit(
            rl_request([("remote_address", "f")]), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        reply = exc
    return time.monotonic() - began, reply


def check_mode(mode: str, reply: object) -> None:
    if mode == "error":
        assert isinstance(reply, grpc.aio.AioRpcError)
        assert reply.code() == grpc.StatusCode.UNAVAILABLE
        assert reply.details().startswith("rate-limit backend unavailable: ")
    else:
        assert isinstance(reply, rls_pb2.RateLimitResponse)
        assert reply.overall_code == (OK if mode == "allow" else OVER)


async def wait_recovered(stub: rls_pb2_grpc.RateLimitServiceStub, within: float = 5.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < within:
        _, reply = await timed_call(stub)
        if isinstance(reply, rls_pb2.RateLimitResponse) and reply.statuses[0].HasField(
            "current_limit"
        ):
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"no recovery within {within} s")


@pytest.mark.parametrize("mode", ["error", "allow", "deny"])
async def test_redis_stopped_then_restarted(
    mode: str, start_server: StartServer, redis_server: RedisServer
) -> None:
    stub = await start(start_server, redis_server.url, mode)
    _, reply = await timed_call(stub)
    assert isinstance(reply, rls_pb2.RateLimitResponse) and reply.overall_code == OK

    redis_server.kill()
    for _ in range(5):
        elapsed, reply = await timed_call(stub)
        check_mode(mode, reply)
        assert elapsed < ANSWER_BOUND_S

    redis_server.start()
    await wait_recovered(stub)


@pytest.mark.parametrize("mode", ["error", "allow", "deny"])
async def test_redis_frozen_answers_within_the_timeout(
    mode: str, start_server: StartServer, redis_server: RedisServer
) -> None:
    stub = await start(start_server, redis_server.url, mode)
    assert redis_server.process is not None
    pid = redis_server.process.pid
    _, reply = await timed_call(stub)
    assert isinstance(reply, rls_pb2.RateLimitResponse)

    os.kill(pid, signal.SIGSTOP)  # connections stay open, nothing answers
    try:
        results = await asyncio.gather(*(timed_call(stub) for _ in range(20)))
    finally:
        os.kill(pid, signal.SIGCONT)
    for elapsed, reply in results:
        check_mode(mode, reply)
        assert elapsed < ANSWER_BOUND_S
    await wait_recovered(stub)


def health(app: App, path: str = "/healthcheck") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http_port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_starts_with_redis_down_and_connects_when_it_comes_up(
    start_server: StartServer,
) -> None:
    port = free_port()
    backend = RedisBackend(RedisOptions(url=f"redis://127.0.0.1:{port}", timeout_s=TIMEOUT_S))
    app = await start_server(RULES, backend=backend, health_interval_s=0.05)
    assert await asyncio.to_thread(health, app) == 503
    assert await asyncio.to_thread(health, app, "/livez") == 200  # not ready, but alive
    stub = rls_pb2_grpc.RateLimitServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    )
    _, reply = await timed_call(stub)
    assert isinstance(reply, grpc.aio.AioRpcError) and reply.code() == grpc.StatusCode.UNAVAILABLE
    with RedisServer(port=port):
        for _ in range(100):
            if await asyncio.to_thread(health, app) == 200:
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(health, app) == 200
        await wait_recovered(stub)


async def test_script_flush_is_recovered_transparently(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    stub = await start(start_server, redis_server.url, "error")
    _, reply = await timed_call(stub)
    assert isinstance(reply, rls_pb2.RateLimitResponse)
    redis_server.client().script_flush()
    _, reply = await timed_call(stub)
    assert isinstance(reply, rls_pb2.RateLimitResponse)
    assert reply.statuses[0].limit_remaining == 998


PER_RULE = """
domain: edge
descriptors:
  - key: route
    value: login
    on_backend_failure: deny  # fail closed
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: route
    value: read
    on_backend_failure: allow  # fail open
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: route
    value: other  # the service's RATELIMITD_BACKEND_FAILURE
    rate_limit: {unit: minute, requests_per_unit: 100}
"""


@pytest.mark.parametrize("service_mode", ["error", "allow"])
async def test_a_rule_fails_closed_or_open_whatever_the_service_does(
    service_mode: str, start_server: StartServer, redis_server: RedisServer
) -> None:
    backend = RedisBackend(RedisOptions(url=redis_server.url, timeout_s=TIMEOUT_S))
    app = await start_server(PER_RULE, backend=backend, backend_failure=service_mode)
    stub = rls_pb2_grpc.RateLimitServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    )

    async def ask(*routes: str) -> object:
        request = rl_request(*[[("route", route)] for route in routes], domain="edge")
        try:
            reply: object = await stub.ShouldRateLimit(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            reply = exc
        return reply

    redis_server.kill()
    login, read, other = await ask("login"), await ask("read"), await ask("other")
    assert isinstance(login, rls_pb2.RateLimitResponse) and login.overall_code == OVER
    assert isinstance(read, rls_pb2.RateLimitResponse) and read.overall_code == OK
    check_mode(service_mode, other)
    both = await ask("read", "login")  # one descriptor denies: the request is denied
    assert isinstance(both, rls_pb2.RateLimitResponse) and both.overall_code == OVER
    assert [status.code for status in both.statuses] == [OK, OVER]
    redis_server.start()


LOCAL = """
domain: edge
descriptors:
  - key: route
    value: search
    on_backend_failure: local
    rate_limit: {unit: minute, requests_per_unit: 4}
"""


async def test_local_mode_counts_in_process_at_a_share_of_the_limit_until_redis_returns(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    """With 2 replicas, each counts 4 / 2 = 2 a minute by itself while Redis is away; once
    Redis answers again, the counting is Redis's."""
    backend = RedisBackend(RedisOptions(url=redis_server.url, timeout_s=TIMEOUT_S))
    app = await start_server(LOCAL, backend=backend, backend_failure="error", local_replicas=2)
    stub = rls_pb2_grpc.RateLimitServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    )
    search = rl_request([("route", "search")], domain="edge")
    first = await stub.ShouldRateLimit(search, timeout=10)
    assert first.overall_code == OK and first.statuses[0].limit_remaining == 3  # Redis's count

    redis_server.kill()
    local = [await stub.ShouldRateLimit(search, timeout=10) for _ in range(3)]
    assert [reply.overall_code for reply in local] == [OK, OK, OVER]
    assert local[0].statuses[0].current_limit.requests_per_unit == 2  # the replica's share
    assert [reply.statuses[0].limit_remaining for reply in local] == [1, 0, 0]

    redis_server.start()
    await wait_for_redis(stub, search)
    back = await stub.ShouldRateLimit(search, timeout=10)
    assert back.statuses[0].current_limit.requests_per_unit == 4  # Redis's again


async def wait_for_redis(stub: rls_pb2_grpc.RateLimitServiceStub, request: object) -> None:
    """Until an answer carries the configured limit again (Redis counts)."""
    for _ in range(100):
        reply = await stub.ShouldRateLimit(request, timeout=10)
        if reply.statuses[0].current_limit.requests_per_unit == 4:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("Redis never took the counting back")
