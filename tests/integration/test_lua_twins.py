"""Each Lua script gives the same answers as its Python twin, on random traffic (hypothesis)."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimitd.backends.base import CounterRequest, CounterResult
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import FakeClock
from ratelimitd.model import Algorithm, Charge, Limit, Unit, Window
from tests.servers.redis import RedisServer

T0 = 1_700_000_100.0
_runs = itertools.count()

limits = st.builds(
    Limit,
    requests_per_unit=st.integers(1, 20),
    unit=st.sampled_from([Unit.SECOND, Unit.MINUTE]),
    unit_multiplier=st.integers(1, 3),
    algorithm=st.sampled_from(list(Algorithm)),
    burst=st.none() | st.integers(1, 40),
    charge=st.sampled_from(list(Charge)),
    window=st.sampled_from(list(Window)),
)
traffic = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False).map(lambda x: round(x, 3)),
        st.integers(0, 5) | st.integers(6, 60),  # costs past a limit too (charge: always)
    ),
    min_size=1,
    max_size=60,
)


async def replay(
    url: str, limit_set: tuple[Limit, ...], hits: list[tuple[float, int]], start: float = T0
) -> None:
    memory_clock, redis_clock = FakeClock(start), FakeClock(start)
    memory = MemoryBackend(memory_clock)
    redis = RedisBackend(RedisOptions(url=url, timeout_s=5.0), clock=redis_clock)
    base = f"twin{next(_runs)}:{{k}}"
    try:
        for gap, cost in hits:
            memory_clock.advance(gap)
            redis_clock.advance(gap)
            request = CounterRequest(base, limit_set, cost)
            (expected,) = await memory.hit([request])
            (got,) = await redis.hit([request])
            assert same(expected, got), (gap, cost, expected, got)
    finally:
        await redis.close()


def same(a: CounterResult, b: CounterResult) -> bool:
    return a.allowed == b.allowed and all(
        x.allowed == y.allowed
        and x.remaining == y.remaining
        and abs(x.reset_after - y.reset_after) <= 0.0011
        for x, y in zip(a.results, b.results, strict=True)
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(limits, min_size=1, max_size=3, unique_by=lambda limit: limit.counter_id).map(tuple),
    traffic,
)
def test_lua_matches_python(
    redis_server_session: RedisServer, limit_set: tuple[Limit, ...], hits: list[tuple[float, int]]
) -> None:
    asyncio.run(replay(redis_server_session.url, limit_set, hits))


debt_limits = st.builds(
    Limit,
    requests_per_unit=st.integers(1, 10),
    unit=st.just(Unit.SECOND),
    unit_multiplier=st.integers(1, 3),
    algorithm=st.sampled_from(list(Algorithm)),
    burst=st.none() | st.integers(1, 20),
    charge=st.just(Charge.ALWAYS),
    window=st.sampled_from(list(Window)),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(debt_limits, min_size=1, max_size=2, unique_by=lambda limit: limit.counter_id).map(
        tuple
    ),
    traffic,
)
def test_lua_matches_python_in_debt(
    redis_server_session: RedisServer, limit_set: tuple[Limit, ...], hits: list[tuple[float, int]]
) -> None:
    """`charge: always` on short windows: debts made, carried over window ends, paid off."""
    asyncio.run(replay(redis_server_session.url, limit_set, hits))
