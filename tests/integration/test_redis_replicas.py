"""Several real service processes sharing one Redis (standalone or Cluster) agree exactly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import libfaketime
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.servers.redis import RedisCluster, RedisServer
from tests.servers.service import ServiceProcess

OK = rls_pb2.RateLimitResponse.OK
RULES = """
domain: shared
descriptors:
  - key: user
    rate_limit: {unit: year, requests_per_unit: 100}  # no window edge during the test
  - key: minute_user
    rate_limit: {unit: minute, requests_per_unit: 5}
"""


def rl_request(key: str, value: str) -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value)
    return rls_pb2.RateLimitRequest(
        domain="shared", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(RULES))
    return path


async def hammer(targets: list[str], request: rls_pb2.RateLimitRequest, calls: int) -> list[int]:
    """`calls` concurrent ShouldRateLimit calls spread evenly over `targets`."""
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    try:
        stubs = [rls_pb2_grpc.RateLimitServiceStub(channel) for channel in channels]
        replies = await asyncio.gather(
            *(stubs[i % len(stubs)].ShouldRateLimit(request, timeout=30) for i in range(calls))
        )
        return [reply.overall_code for reply in replies]
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_two_processes_admit_exactly_the_limit(
    kind: str, rules: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        url = cluster.url
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "5000",
    }
    with ServiceProcess(rules, env) as first, ServiceProcess(rules, env) as second:
        codes = await hammer(
            [first.target, second.target], rl_request("user", f"{kind}-exact"), 500
        )
    assert codes.count(OK) == 100
    assert len(codes) == 500


def faketime_env(offset: str) -> dict[str, str | None]:
    """Environment that shifts a child process's wall clock by `offset` (libfaketime)."""
    _, env = libfaketime.get_reload_information()
    return {**env, "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


def test_faketime_really_shifts_a_child_clock() -> None:
    env = {**faketime_env("+37m")}
    code = "import time; print(time.time())"
    import os

    child_env = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    shifted = float(subprocess.check_output([sys.executable, "-c", code], env=child_env))
    plain = float(subprocess.check_output([sys.executable, "-c", code]))
    assert 36 * 60 < shifted - plain < 38 * 60


async def test_replicas_with_skewed_clocks_share_one_window(
    rules: Path, redis_server: RedisServer
) -> None:
    """Time comes from Redis: a replica 37 minutes off still counts in the same window."""
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": redis_server.url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "5000",
    }
    skewed_env = {**env, **faketime_env("+37m")}
    with ServiceProcess(rules, env) as normal, ServiceProcess(rules, skewed_env) as skewed:
        # stay clear of a minute's edge, where the shared window would roll over mid-test
        if time.time() % 60 > 45:
            await asyncio.sleep(61 - time.time() % 60)
        request = rl_request("minute_user", "skew")
        codes = []
        resets = []
        for target in [normal.target, skewed.target] * 5:
            async with grpc.aio.insecure_channel(target) as channel:
                reply = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request)
            codes.append(reply.overall_code)
            resets.append(reply.statuses[0].duration_until_reset.ToTimedelta().total_seconds())
    assert codes.count(OK) == 5  # one shared window of 5 per minute, not 5 per replica
    assert max(resets) - min(resets) < 5  # both report the same reset, from one clock
