"""Concurrency limits: leases (ratelimitd/leases.py), on every backend (issue 21, item 4)."""

from __future__ import annotations

import asyncio

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.clock import FakeClock
from ratelimitd.errors import InvalidRequest
from ratelimitd.leases import Lease, Leases, decode_lease_id, encode_lease_id
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.model import Code, Descriptor, Request
from tests.helpers import config

RULES = """
domain: app
descriptors:
  - key: tenant
    rate_limit: {algorithm: concurrency, max_in_flight: 3, lease_ttl_s: 30}
  - key: export
    rate_limit: {algorithm: concurrency, max_in_flight: 1, lease_ttl_s: 600}
  - key: mixed
    rate_limits:
      - {algorithm: concurrency, max_in_flight: 2, lease_ttl_s: 10}
      - {unit: minute, requests_per_unit: 5}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 5}
"""


@pytest.fixture
def limiter(backend: Backend, key_prefix: str) -> Limiter:
    return Limiter(config(RULES), backend, LimiterOptions(key_prefix=key_prefix))


@pytest.fixture
def leases(limiter: Limiter) -> Leases:
    return Leases(limiter)


def of(*pairs: tuple[str, str]) -> tuple[Descriptor, ...]:
    return tuple(Descriptor((pair,)) for pair in pairs)


async def test_at_most_max_in_flight_then_a_release_frees_one(
    leases: Leases, clock: FakeClock
) -> None:
    held = [await leases.acquire("app", of(("tenant", "a"))) for _ in range(3)]
    assert all(lease.allowed and lease.id and lease.ttl_s == 30 for lease in held)
    assert len({lease.id for lease in held}) == 3
    clock.advance(5)
    refused = await leases.acquire("app", of(("tenant", "a")))
    assert refused == Lease("", False, pytest.approx(25, abs=0.0011), 0.0)
    assert (await leases.acquire("app", of(("tenant", "b")))).allowed  # another tenant
    assert await leases.release(held[1].id)
    assert not await leases.release(held[1].id)  # once
    assert (await leases.acquire("app", of(("tenant", "a")))).allowed
    assert not (await leases.acquire("app", of(("tenant", "a")))).allowed


async def test_a_lease_not_released_ends_by_its_ttl(leases: Leases, clock: FakeClock) -> None:
    crashed = await leases.acquire("app", of(("export", "x")))
    assert crashed.allowed
    clock.advance(599)
    assert not (await leases.acquire("app", of(("export", "x")))).allowed
    clock.advance(1)
    after = await leases.acquire("app", of(("export", "x")))
    assert after.allowed
    assert not await leases.release(crashed.id)  # it ended: releasing it frees nothing
    assert not (await leases.acquire("app", of(("export", "x")))).allowed
    assert await leases.release(after.id)


async def test_all_descriptors_or_none(leases: Leases) -> None:
    full = await leases.acquire("app", of(("export", "busy")))
    assert full.allowed
    both = await leases.acquire("app", of(("tenant", "c"), ("export", "busy")))
    assert not both.allowed and both.id == ""
    # the refused lease took no place on `tenant=c`: all three are still free
    assert all([(await leases.acquire("app", of(("tenant", "c")))).allowed for _ in range(3)])
    assert not (await leases.acquire("app", of(("tenant", "c")))).allowed


async def test_one_lease_per_key_however_often_named(leases: Leases) -> None:
    twice = await leases.acquire("app", of(("export", "t"), ("export", "t")))
    assert twice.allowed
    assert await leases.release(twice.id)
    assert (await leases.acquire("app", of(("export", "t")))).allowed


async def test_descriptors_without_a_concurrency_rule_hold_nothing(leases: Leases) -> None:
    lease = await leases.acquire("app", of(("plain", "p"), ("unknown", "u")))
    assert lease.allowed and lease.ttl_s == 0 and lease.id
    assert not await leases.release(lease.id)
    assert (await leases.acquire("other-domain", of(("tenant", "a")))).allowed


async def test_decisions_do_not_count_concurrency_rules(leases: Leases, limiter: Limiter) -> None:
    """ShouldRateLimit (Envoy) never takes a lease, which nothing would release."""
    request = Request("app", of(("mixed", "m")))
    codes = [(await limiter.should_rate_limit(request)).overall for _ in range(6)]
    assert codes == [Code.OK] * 5 + [Code.OVER_LIMIT]  # the per-minute limit only
    only_leases = Request("app", of(("export", "e")))
    assert all(
        [(await limiter.should_rate_limit(only_leases)).overall is Code.OK for _ in range(3)]
    )
    assert (await leases.acquire("app", of(("mixed", "m")))).allowed  # no lease was taken
    assert (await leases.acquire("app", of(("mixed", "m")))).allowed
    assert not (await leases.acquire("app", of(("mixed", "m")))).allowed


async def test_concurrent_acquires_admit_exactly_max_in_flight(leases: Leases) -> None:
    results = await asyncio.gather(
        *(leases.acquire("app", of(("tenant", "race"))) for _ in range(40))
    )
    assert sum(lease.allowed for lease in results) == 3


async def test_a_reload_applies_the_new_max_to_the_leases_held(
    leases: Leases, limiter: Limiter
) -> None:
    held = [await leases.acquire("app", of(("tenant", "r"))) for _ in range(3)]
    assert all(lease.allowed for lease in held)
    limiter.config = config(RULES.replace("max_in_flight: 3", "max_in_flight: 4"))
    assert (await leases.acquire("app", of(("tenant", "r")))).allowed
    assert not (await leases.acquire("app", of(("tenant", "r")))).allowed
    limiter.config = config(RULES.replace("max_in_flight: 3", "max_in_flight: 2"))
    assert await leases.release(held[0].id)
    assert not (await leases.acquire("app", of(("tenant", "r")))).allowed  # 3 held, max 2


@pytest.mark.parametrize(
    "lease_id",
    [
        "",
        "no-dot",
        "token.!!!",
        "token." + "x" * 70_000,
        encode_lease_id("token", ["someone-else:{x}:cc"]),
        encode_lease_id("token", ["PREFIX{x}:fw60"]),
        encode_lease_id("", ["PREFIX{x}:cc"]),
        "token.eyJhIjogMX0",  # {"a": 1}
        "tökén.W10",
    ],
)
async def test_a_malformed_lease_id_is_refused(leases: Leases, lease_id: str) -> None:
    lease_id = lease_id.replace("PREFIX", leases.limiter.options.key_prefix)
    with pytest.raises(InvalidRequest, match="not a lease id"):
        await leases.release(lease_id)


def test_a_lease_id_round_trips() -> None:
    keys = ["p:{app|tenant=a}:cc", "p:{app|export=%7Bx%7D}:cc"]
    assert decode_lease_id(encode_lease_id("tok", keys), "p:") == ("tok", keys)
