"""The decision logic on a fake clock, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.clock import FakeClock
from ratelimitd.errors import InvalidRequest
from ratelimitd.limiter import UNLIMITED_REMAINING, Limiter, LimiterOptions
from ratelimitd.model import Code, Descriptor, LimitOverride, Request, Unit
from tests.helpers import config, request

RULES = """
domain: app
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: route
    value: login
    descriptors:
      - key: ip
        rate_limit: {name: login, unit: minute, unit_multiplier: 15, requests_per_unit: 5}
  - key: route
    value: bulk
    rate_limit: {name: bulk, unit: second, requests_per_unit: 2, replaces: [{name: login}]}
  - key: internal
    rate_limit: {unlimited: true}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: a_b
    value: c
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: a
    value: b_c
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


@pytest.fixture
def limiter(backend: Backend, key_prefix: str) -> Limiter:
    return Limiter(config(RULES), backend, LimiterOptions(key_prefix=key_prefix))


async def codes(limiter: Limiter, req: Request, times: int) -> list[Code]:
    return [(await limiter.should_rate_limit(req)).overall for _ in range(times)]


async def test_limit_reached_exactly(limiter: Limiter) -> None:
    req = request("app", [("ip", "1.2.3.4")])
    decisions = [await limiter.should_rate_limit(req) for _ in range(4)]
    assert [d.overall for d in decisions] == [Code.OK] * 3 + [Code.OVER_LIMIT]
    assert [d.statuses[0].remaining for d in decisions] == [2, 1, 0, 0]
    status = decisions[0].statuses[0]
    assert status.limit is not None and status.limit.requests_per_unit == 3
    assert status.limit.unit is Unit.MINUTE
    assert 0 < status.reset_after <= 60


async def test_each_value_of_a_key_only_rule_has_its_own_counter(limiter: Limiter) -> None:
    assert await codes(limiter, request("app", [("ip", "a")]), 3) == [Code.OK] * 3
    assert await codes(limiter, request("app", [("ip", "b")]), 1) == [Code.OK]


async def test_window_rolls_over(limiter: Limiter, clock: FakeClock) -> None:
    req = request("app", [("ip", "1.2.3.4")])
    assert await codes(limiter, req, 4) == [Code.OK] * 3 + [Code.OVER_LIMIT]
    clock.advance(60)
    assert await codes(limiter, req, 1) == [Code.OK]


async def test_unit_multiplier_holds_for_fifteen_minutes(
    limiter: Limiter, clock: FakeClock
) -> None:
    req = request("app", [("route", "login"), ("ip", "9.9.9.9")])
    assert await codes(limiter, req, 6) == [Code.OK] * 5 + [Code.OVER_LIMIT]
    clock.advance(14 * 60)
    assert await codes(limiter, req, 1) == [Code.OVER_LIMIT]


async def test_unknown_domain_and_unmatched_descriptors_are_ok_without_limit(
    limiter: Limiter,
) -> None:
    for req in (request("nope", [("ip", "x")]), request("app", [("other", "x")])):
        decision = await limiter.should_rate_limit(req)
        assert decision.overall is Code.OK
        assert decision.statuses[0].limit is None


async def test_one_status_per_descriptor_in_order(limiter: Limiter) -> None:
    req = request("app", [("other", "x")], [("ip", "q")], [("internal", "y")])
    decision = await limiter.should_rate_limit(req)
    assert len(decision.statuses) == 3
    assert decision.statuses[0].limit is None
    assert decision.statuses[1].limit is not None and decision.statuses[1].remaining == 2
    assert decision.statuses[2].remaining == UNLIMITED_REMAINING


async def test_any_over_limit_descriptor_makes_the_request_over(limiter: Limiter) -> None:
    await codes(limiter, request("app", [("ip", "z")]), 3)
    decision = await limiter.should_rate_limit(request("app", [("other", "x")], [("ip", "z")]))
    assert decision.overall is Code.OVER_LIMIT
    assert [s.code for s in decision.statuses] == [Code.OK, Code.OVER_LIMIT]


async def test_unlimited_never_counts(limiter: Limiter) -> None:
    assert await codes(limiter, request("app", [("internal", "x")]), 100) == [Code.OK] * 100


async def test_rule_shadow_mode_answers_ok_but_counts(limiter: Limiter) -> None:
    req = request("app", [("trial", "t")])
    decisions = [await limiter.should_rate_limit(req) for _ in range(3)]
    assert all(d.overall is Code.OK for d in decisions)
    assert all(d.statuses[0].code is Code.OK for d in decisions)
    assert [d.statuses[0].remaining for d in decisions] == [0, 0, 0]


async def test_global_shadow_mode_answers_ok_overall(backend: Backend, key_prefix: str) -> None:
    limiter = Limiter(
        config(RULES), backend, LimiterOptions(key_prefix=key_prefix, shadow_mode=True)
    )
    req = request("app", [("ip", "s")])
    decisions = [await limiter.should_rate_limit(req) for _ in range(4)]
    assert all(d.overall is Code.OK for d in decisions)
    assert decisions[3].statuses[0].code is Code.OVER_LIMIT
    assert decisions[3].statuses[0].remaining == 0


async def test_replaces_drops_the_named_limit_and_does_not_count_it(limiter: Limiter) -> None:
    login = [("route", "login"), ("ip", "r")]
    both = request("app", login, [("route", "bulk")])
    first = await limiter.should_rate_limit(both)
    assert first.statuses[0].limit is None and first.statuses[0].code is Code.OK
    assert first.statuses[1].limit is not None and first.statuses[1].limit.name == "bulk"
    # the login counter was not charged: five more attempts are still allowed alone
    assert await codes(limiter, request("app", login), 6) == [Code.OK] * 5 + [Code.OVER_LIMIT]


async def test_request_hits_addend(limiter: Limiter) -> None:
    decision = await limiter.should_rate_limit(request("app", [("ip", "h")], hits=2))
    assert decision.statuses[0].remaining == 1
    decision = await limiter.should_rate_limit(request("app", [("ip", "h")], hits=2))
    assert decision.overall is Code.OVER_LIMIT
    assert decision.statuses[0].remaining == 1  # the denied hit was not charged


async def test_descriptor_hits_addend_zero_checks_without_consuming(limiter: Limiter) -> None:
    probe = request("app", Descriptor((("ip", "p"),), hits_addend=0))
    for _ in range(10):
        decision = await limiter.should_rate_limit(probe)
        assert decision.overall is Code.OK and decision.statuses[0].remaining == 3
    await codes(limiter, request("app", [("ip", "p")]), 3)
    decision = await limiter.should_rate_limit(probe)
    assert decision.overall is Code.OVER_LIMIT


async def test_descriptor_hits_addend_overrides_the_request_one(limiter: Limiter) -> None:
    req = request("app", Descriptor((("ip", "d"),), hits_addend=3), hits=1)
    decision = await limiter.should_rate_limit(req)
    assert decision.statuses[0].remaining == 0


async def test_limit_override_replaces_the_configured_limit(limiter: Limiter) -> None:
    override = LimitOverride(requests_per_unit=1, unit=Unit.HOUR)
    req = request("app", Descriptor((("ip", "o"),), override=override))
    decisions = [await limiter.should_rate_limit(req) for _ in range(2)]
    assert [d.overall for d in decisions] == [Code.OK, Code.OVER_LIMIT]
    limit = decisions[0].statuses[0].limit
    assert limit is not None and (limit.requests_per_unit, limit.unit) == (1, Unit.HOUR)


async def test_limit_override_applies_to_unconfigured_keys_of_known_domains(
    limiter: Limiter,
) -> None:
    override = LimitOverride(requests_per_unit=1, unit=Unit.MINUTE)
    req = request("app", Descriptor((("anything", "x"),), override=override))
    assert await codes(limiter, req, 2) == [Code.OK, Code.OVER_LIMIT]
    other = request("nope", Descriptor((("anything", "x"),), override=override))
    assert await codes(limiter, other, 2) == [Code.OK, Code.OK]


async def test_colliding_concatenations_stay_apart(limiter: Limiter) -> None:
    assert await codes(limiter, request("app", [("a_b", "c")]), 1) == [Code.OK]
    assert await codes(limiter, request("app", [("a", "b_c")]), 1) == [Code.OK]


async def test_a_descriptor_sent_twice_in_one_request_counts_twice(limiter: Limiter) -> None:
    """The second sees the first's charge; it is denied, so the request charges nothing."""
    twice = request("app", [("ip", "dup")], [("ip", "dup")], hits=2)
    decision = await limiter.should_rate_limit(twice)
    assert [s.code for s in decision.statuses] == [Code.OK, Code.OVER_LIMIT]
    assert [s.remaining for s in decision.statuses] == [1, 1]
    one = await limiter.should_rate_limit(request("app", [("ip", "dup")], hits=1))
    assert one.overall is Code.OK and one.statuses[0].remaining == 2
    fits = await limiter.should_rate_limit(request("app", [("ip", "dup")], [("ip", "dup")]))
    assert fits.overall is Code.OK and [s.remaining for s in fits.statuses] == [1, 0]


async def test_a_denied_request_charges_none_of_its_descriptors(limiter: Limiter) -> None:
    """envoyproxy/ratelimit#1060: when one descriptor denies, the others are not charged."""
    ip_then_login = request("app", [("ip", "w")], [("route", "login"), ("ip", "w")], hits=3)
    assert (await limiter.should_rate_limit(ip_then_login)).overall is Code.OK  # 3 of 3, 3 of 5
    again = await limiter.should_rate_limit(ip_then_login)  # ip: 3 more does not fit
    assert again.overall is Code.OVER_LIMIT
    login = await limiter.should_rate_limit(
        request("app", [("route", "login"), ("ip", "w")], hits=2)
    )
    assert login.overall is Code.OK and login.statuses[0].remaining == 0  # 2 of the 5 were left


async def test_concurrent_calls_admit_exactly_the_limit(limiter: Limiter) -> None:
    req = request("app", [("ip", "c")])
    results = await asyncio.gather(*(limiter.should_rate_limit(req) for _ in range(200)))
    assert sum(d.overall is Code.OK for d in results) == 3


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (Request("", (Descriptor((("k", "v"),)),)), "domain must not be empty"),
        (Request("app", ()), "descriptors must not be empty"),
        (
            Request("app", (Descriptor((("k", "v"),)), Descriptor(()))),
            "descriptors[1] has no entries",
        ),
        (Request("app", (Descriptor((("", "v"),)),)), "descriptors[0].entries[0] has an empty key"),
    ],
)
async def test_bad_requests_are_invalid(limiter: Limiter, req: Request, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await limiter.should_rate_limit(req)
    assert str(caught.value) == message
