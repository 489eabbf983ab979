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
