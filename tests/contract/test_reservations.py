"""Reserve, then commit or refund (ratelimitd/reservations.py), on every backend."""

from __future__ import annotations

import asyncio

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.clock import FakeClock
from ratelimitd.errors import InvalidRequest
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.model import Descriptor, Request
from ratelimitd.reservations import Reservations
from tests.helpers import config

RULES = """
domain: llm
descriptors:
  - key: key
    rate_limits:
      - {name: per_minute, unit: minute, requests_per_unit: 10000, charge: always}
      - {name: per_day, unit: day, requests_per_unit: 100000, charge: always}
  - key: strict
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: bucket
    rate_limit: {unit: minute, requests_per_unit: 600, algorithm: token_bucket, burst: 100}
"""


@pytest.fixture
def limiter(backend: Backend, key_prefix: str) -> Limiter:
    return Limiter(config(RULES), backend, LimiterOptions(key_prefix=key_prefix))


@pytest.fixture
def reservations(limiter: Limiter) -> Reservations:
    return Reservations(limiter)


def of(*entries: tuple[str, str]) -> tuple[Descriptor, ...]:
    return (Descriptor(entries),)


async def remaining(limiter: Limiter, descriptors: tuple[Descriptor, ...]) -> dict[str, int]:
    states = await limiter.peek(Request("llm", descriptors))
    return {state.limit.name or "limit": state.result.remaining for state in states}


async def test_commit_charges_the_actual_and_refund_gives_the_estimate_back(
    reservations: Reservations, limiter: Limiter
) -> None:
    key = of(("key", "a"))
    reserved = await reservations.reserve("llm", key, 1000, 60)
    assert reserved.allowed and reserved.id
    assert await remaining(limiter, key) == {"per_minute": 9000, "per_day": 99000}
    assert await reservations.commit(reserved.id, 300) == 300  # less: 700 back
    assert await remaining(limiter, key) == {"per_minute": 9700, "per_day": 99700}
    more = await reservations.reserve("llm", key, 100, 60)
    assert await reservations.commit(more.id, 500) == 500  # more: 400 on top
    assert await remaining(limiter, key) == {"per_minute": 9200, "per_day": 99200}
    gone = await reservations.reserve("llm", key, 2000, 60)
    assert await reservations.refund(gone.id) == 0
    assert await remaining(limiter, key) == {"per_minute": 9200, "per_day": 99200}


async def test_settling_is_idempotent_and_happens_once(reservations: Reservations) -> None:
    reserved = await reservations.reserve("llm", of(("key", "b")), 100, 60)
    assert await reservations.commit(reserved.id, 80) == 80
    assert await reservations.commit(reserved.id, 80) == 80  # a retry: the same answer
    with pytest.raises(InvalidRequest, match="already settled"):
        await reservations.commit(reserved.id, 90)
    with pytest.raises(InvalidRequest, match="already settled"):
        await reservations.refund(reserved.id)
    refunded = await reservations.reserve("llm", of(("key", "b")), 100, 60)
    assert await reservations.refund(refunded.id) == 0
    assert await reservations.refund(refunded.id) == 0


async def test_a_denied_reservation_charges_nothing(
    reservations: Reservations, limiter: Limiter
) -> None:
    strict = of(("strict", "s"))
    first = await reservations.reserve("llm", strict, 80, 60)
    denied = await reservations.reserve("llm", strict, 30, 60)
    assert first.allowed and not denied.allowed and denied.id == ""
    assert 0 < denied.retry_after <= 60
    assert await remaining(limiter, strict) == {"limit": 20}


async def test_bad_input_is_refused_and_changes_nothing(
    reservations: Reservations, limiter: Limiter
) -> None:
    key = of(("key", "c"))
    with pytest.raises(InvalidRequest, match="unknown or expired"):
        await reservations.commit("no-such-reservation", 10)
    with pytest.raises(InvalidRequest, match="above the largest limit"):
        await reservations.reserve("llm", key, 100_001, 60)
    with pytest.raises(InvalidRequest, match="at least 1"):
        await reservations.reserve("llm", key, 0, 60)
    with pytest.raises(InvalidRequest, match="ttl"):
        await reservations.reserve("llm", key, 10, 0)
    reserved = await reservations.reserve("llm", key, 10, 60)
    with pytest.raises(InvalidRequest, match="negative"):
        await reservations.commit(reserved.id, -1)
    assert await remaining(limiter, key) == {"per_minute": 9990, "per_day": 99990}
    assert await reservations.commit(reserved.id, 10) == 10  # still settles afterwards


async def test_a_refund_reaches_only_the_window_that_was_charged(
    reservations: Reservations, limiter: Limiter, clock: FakeClock
) -> None:
    strict = of(("strict", "w"))
    reserved = await reservations.reserve("llm", strict, 50, 600)
    clock.advance(60)  # the next minute: the 50 went with the last one
    assert await reservations.refund(reserved.id) == 0
    assert await remaining(limiter, strict) == {"limit": 100}
    again = await reservations.reserve("llm", strict, 50, 600)
    await reservations.refund(again.id)
    assert await remaining(limiter, strict) == {"limit": 100}


async def test_a_bucket_gets_its_tokens_back_up_to_its_burst(
    reservations: Reservations, limiter: Limiter, clock: FakeClock
) -> None:
    bucket = of(("bucket", "t"))
    reserved = await reservations.reserve("llm", bucket, 60, 60)
    clock.advance(3)  # 30 tokens refilled meanwhile (10 a second): 70
    await reservations.commit(reserved.id, 10)  # 50 back, but a bucket holds 100 at most
    assert await remaining(limiter, bucket) == {"limit": 100}


async def test_concurrent_reserve_and_commit_pairs_charge_exactly_the_actual_sum(
    reservations: Reservations, limiter: Limiter
) -> None:
    key = of(("key", "many"))

    async def pair(index: int) -> int:
        reserved = await reservations.reserve("llm", key, 200, 60)
        assert reserved.allowed
        actual = 50 + index * 7  # some under the estimate, some over
        return await reservations.commit(reserved.id, actual)

    actuals = await asyncio.gather(*(pair(index) for index in range(40)))
    assert await remaining(limiter, key) == {
        "per_minute": 10000 - sum(actuals),
        "per_day": 100000 - sum(actuals),
    }


async def test_a_reservation_not_settled_in_time_is_settled_at_its_estimate(
    reservations: Reservations, limiter: Limiter, clock: FakeClock
) -> None:
    key = of(("key", "late"))
    reserved = await reservations.reserve("llm", key, 700, 0.3)
    clock.advance(1)  # the memory backend's time
    await asyncio.sleep(0.4)  # Redis's own: a record's time to live runs on its clock
    with pytest.raises(InvalidRequest, match="unknown or expired"):
        await reservations.commit(reserved.id, 100)
    assert await remaining(limiter, key) == {"per_minute": 9300, "per_day": 99300}
