"""The refund Lua script gives the same counters as its Python twins (`algorithms.REFUNDS`),
on random traffic and refunds (hypothesis), as test_lua_twins does for hits."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimitd.backends.base import CounterRequest
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import FakeClock
from ratelimitd.model import Algorithm, Charge, Limit, Unit, Window
from tests.integration.test_lua_twins import T0, same
from tests.servers.redis import RedisServer

_runs = itertools.count()

limits = st.builds(
    Limit,
    requests_per_unit=st.integers(1, 20),
    unit=st.just(Unit.SECOND),
    unit_multiplier=st.integers(1, 3),
    algorithm=st.sampled_from(list(Algorithm)),
    burst=st.none() | st.integers(1, 40),
    charge=st.sampled_from(list(Charge)),
    window=st.sampled_from(list(Window)),
)
# (seconds later, cost of a hit, or minus the amount of a refund of what was charged `back` s ago)
steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=3, allow_nan=False).map(lambda x: round(x, 3)),
        st.integers(-30, 10),
        st.floats(min_value=0, max_value=4, allow_nan=False).map(lambda x: round(x, 3)),
    ),
    min_size=1,
    max_size=40,
)


async def replay(
    url: str,
    limit_set: tuple[Limit, ...],
    script: list[tuple[float, int, float]],
    start: float = T0,
    scale: float = 1.0,
) -> None:
    """Runs `script`, its times multiplied by `scale`, from `start`."""
    memory_clock, redis_clock = FakeClock(start), FakeClock(start)
    memory = MemoryBackend(memory_clock)
    redis = RedisBackend(RedisOptions(url=url, timeout_s=5.0), clock=redis_clock)
    base = f"refund{next(_runs)}:{{k}}"
    try:
        for gap, amount, back in script:
            memory_clock.advance(gap * scale)
            redis_clock.advance(gap * scale)
            if amount < 0:
                refund = CounterRequest(base, limit_set, -amount)
                charged_at = memory_clock.now() - back * scale
                await memory.refund([refund], charged_at)
                await redis.refund([refund], charged_at)
                amount = 0  # then look: both must agree on what the refund left
            request = CounterRequest(base, limit_set, amount)
            (expected,) = await memory.hit([request])
            (got,) = await redis.hit([request])
            assert same(expected, got), (gap, amount, back, expected, got)
    finally:
        await redis.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(limits, min_size=1, max_size=2, unique_by=lambda limit: limit.counter_id).map(tuple),
    steps,
)
def test_refund_lua_matches_python(
    redis_server_session: RedisServer,
    limit_set: tuple[Limit, ...],
    script: list[tuple[float, int, float]],
) -> None:
    asyncio.run(replay(redis_server_session.url, limit_set, script))


calendar_limits = st.builds(
    Limit,
    requests_per_unit=st.integers(1, 20),
    unit=st.sampled_from([Unit.DAY, Unit.MONTH]),
    charge=st.sampled_from(list(Charge)),
    time_zone=st.sampled_from(["UTC", "Europe/Paris", "America/Santiago"]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(calendar_limits, min_size=1, max_size=2, unique_by=lambda limit: limit.counter_id).map(
        tuple
    ),
    steps,
    st.sampled_from([1_774_720_800.0, 1_788_566_400.0, 1_803_769_200.0]),  # before DST, month end
)
def test_refund_lua_matches_python_on_calendar_windows(
    redis_server_session: RedisServer,
    limit_set: tuple[Limit, ...],
    script: list[tuple[float, int, float]],
    start: float,
) -> None:
    """Times in hours: refunds that reach back over a calendar day's end, or not."""
    asyncio.run(replay(redis_server_session.url, limit_set, script, start=start, scale=3600))
