"""The lease scripts (lua/lease_acquire.lua, lease_release.lua) give the same answers as their
Python twin (backends/lease_table.py) on random traffic (hypothesis)."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimitd.backends.base import LeaseRequest
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import FakeClock
from tests.integration.test_lua_twins import T0
from tests.servers.redis import RedisServer

_runs = itertools.count()
KEYS = 3

# (seconds later, which keys, or None to release an earlier lease, which one)
steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=4, allow_nan=False).map(lambda x: round(x, 3)),
        st.none() | st.lists(st.integers(0, KEYS - 1), min_size=1, max_size=KEYS),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=50,
)
shapes = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([0.5, 1.0, 2.5, 10.0])),
    min_size=KEYS,
    max_size=KEYS,
)


async def replay(
    url: str, shape: list[tuple[int, float]], script: list[tuple[float, list[int] | None, int]]
) -> None:
    memory_clock, redis_clock = FakeClock(T0), FakeClock(T0)
    memory = MemoryBackend(memory_clock)
    redis = RedisBackend(RedisOptions(url=url, timeout_s=5.0), clock=redis_clock)
    run = next(_runs)
    requests = [
        LeaseRequest(f"twin{run}:{{k{index}}}:cc", most, ttl)
        for index, (most, ttl) in enumerate(shape)
    ]
    taken: list[tuple[str, list[str]]] = []
    try:
        for number, (gap, keys, pick) in enumerate(script):
            memory_clock.advance(gap)
            redis_clock.advance(gap)
            if keys is None:
                if taken:
                    lease, held = taken[pick % len(taken)]
                    assert await memory.release(held, lease) == await redis.release(held, lease)
                continue
            asked = [requests[key] for key in keys]
            lease = f"lease{number}"
            expected = await memory.acquire(asked, lease)
            got = await redis.acquire(asked, lease)
            assert len(expected) == len(got)
            for want, have in zip(expected, got, strict=True):
                assert (want.allowed, want.in_flight) == (have.allowed, have.in_flight)
                assert abs(want.retry_after - have.retry_after) <= 0.0011
            if all(result.allowed for result in expected):
                taken.append((lease, [request.key for request in asked]))
    finally:
        await redis.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shapes, steps)
def test_lease_lua_matches_python(
    redis_server_session: RedisServer,
    shape: list[tuple[int, float]],
    script: list[tuple[float, list[int] | None, int]],
) -> None:
    asyncio.run(replay(redis_server_session.url, shape, script))
