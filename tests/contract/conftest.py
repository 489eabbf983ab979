"""One behaviour suite, run against every backend through the `backend` fixture.

Redis backends are given the fake clock: its time is then sent to the Lua scripts as an
argument instead of Redis's own `TIME`, so the same scenario gives the same answers
everywhere without sleeping. Production never passes a clock.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import FakeClock
from tests.servers.redis import RedisCluster, RedisSentinelSetup, RedisServer

BACKENDS = ["memory", "redis", "cluster", "sentinel"]
_prefixes = itertools.count()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_100.0)  # on a 15-minute (and so a minute) boundary


@pytest.fixture
def key_prefix() -> str:
    """A prefix of its own for each test, so tests sharing one Redis never meet."""
    return f"t{next(_prefixes)}:"


def redis_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server_session")
        return server.url
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    sentinel: RedisSentinelSetup = request.getfixturevalue("redis_sentinel")
    return sentinel.url


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Backend]:
    kind = request.param
    built: Backend
    if kind == "memory":
        built = MemoryBackend(clock)
    else:
        # a generous timeout: the shared test machine can stall for a while
        built = RedisBackend(RedisOptions(url=redis_url(kind, request), timeout_s=5.0), clock=clock)
    yield built
    await built.close()
