"""What only the memory backend promises: bounded memory."""

from __future__ import annotations

from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.clock import FakeClock
from ratelimitd.limiter import Limiter
from tests.helpers import config, request

RULES = """
domain: app
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 3}
"""


async def test_memory_is_reclaimed_after_windows_expire() -> None:
    clock = FakeClock(start=1_700_000_100.0)
    backend = MemoryBackend(clock)
    limiter = Limiter(config(RULES), backend)
    for n in range(1000):
        await limiter.should_rate_limit(request("app", [("ip", f"10.0.{n // 256}.{n % 256}")]))
    assert len(backend) == 1000
    clock.advance(61)
    await limiter.should_rate_limit(request("app", [("ip", "fresh")]))
    assert len(backend) == 1


async def test_a_counter_whose_expiry_moves_on_is_kept_then_reclaimed() -> None:
    from ratelimitd.backends.base import CounterRequest
    from ratelimitd.model import Algorithm, Limit, Unit

    clock = FakeClock(start=1_700_000_100.0)
    backend = MemoryBackend(clock)
    bucket = (Limit(10, Unit.SECOND, algorithm=Algorithm.TOKEN_BUCKET, burst=10),)
    request = CounterRequest("k:{a}", bucket, 3)
    for _ in range(20):  # hit every 0.3 s: the bucket is never full, its expiry keeps moving
        assert (await backend.hit([request]))[0].allowed
        clock.advance(0.3)
        assert len(backend) == 1
    clock.advance(2)  # full again after 0.5 s: reclaimed at the next sweep
    await backend.hit([CounterRequest("k:{other}", bucket, 1)])
    assert len(backend) == 1


async def test_reset_counters_are_gone_and_counted() -> None:
    from ratelimitd.backends.base import CounterRequest
    from ratelimitd.model import Limit, Unit

    backend = MemoryBackend(FakeClock(start=1_700_000_100.0))
    request = CounterRequest("k:{a}", (Limit(3, Unit.MINUTE), Limit(100, Unit.DAY)), 1)
    await backend.hit([request])
    assert await backend.reset([request]) == 2
    assert await backend.reset([request]) == 0
    assert (await backend.hit([request]))[0].results[0].remaining == 2
