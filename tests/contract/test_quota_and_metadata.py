"""quota_mode and descriptor metadata with envoyproxy/ratelimit's semantics (its PRs #1045,
#1059 and #1112, src/service/ratelimit.go), and `charge: always` beside `if_fits` on one
descriptor; on every backend."""

from __future__ import annotations

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.model import Code, Descriptor, Request
from tests.helpers import config, request

RULES = """
domain: llm
descriptors:
  - key: model
    value: primary
    quota_mode: true
    metadata: {backend: {name: primary, pool: a}, tier: gold}
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: model
    value: fallback
    quota_mode: true
    metadata: {backend: {name: fallback, region: eu}, tier: silver}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: strict
    metadata: {seen: true}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: mixed
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 50}
      - {name: tokens, unit: minute, requests_per_unit: 100, charge: always}
"""

OK, OVER = Code.OK, Code.OVER_LIMIT
BOTH_MODELS = [("model", "primary")], [("model", "fallback")]


@pytest.fixture
def limiter(backend: Backend, key_prefix: str) -> Limiter:
    options = LimiterOptions(key_prefix=key_prefix, response_dynamic_metadata=True)
    return Limiter(config(RULES), backend, options)


async def test_a_used_up_quota_alone_does_not_deny(limiter: Limiter) -> None:
    answers = [await limiter.should_rate_limit(request("llm", *BOTH_MODELS)) for _ in range(3)]
    codes = [(d.overall, d.statuses[0].code, d.statuses[1].code) for d in answers]
    assert codes == [
        (OK, OK, OK),
        (OK, OK, OVER),  # the fallback's quota is used up: said, not enforced
        (OVER, OVER, OVER),  # every quota descriptor is over: denied
    ]


async def test_a_rate_limit_descriptor_over_its_limit_still_denies(limiter: Limiter) -> None:
    strict = request("llm", [("strict", "s")], [("model", "primary")])
    assert (await limiter.should_rate_limit(strict)).overall is OK
    second = await limiter.should_rate_limit(strict)
    assert second.overall is OVER
    assert [status.code for status in second.statuses] == [OVER, OK]


async def test_global_quota_mode_makes_every_rule_a_quota(
    backend: Backend, key_prefix: str
) -> None:
    limiter = Limiter(
        config(RULES), backend, LimiterOptions(key_prefix=key_prefix, quota_mode=True)
    )
    both = request("llm", [("strict", "g")], [("user", "g")])
    assert (await limiter.should_rate_limit(both)).overall is OK
    second = await limiter.should_rate_limit(both)
    assert second.overall is OK and [s.code for s in second.statuses] == [OVER, OK]


async def test_metadata_of_the_descriptors_under_their_limit_is_merged(limiter: Limiter) -> None:
    first = await limiter.should_rate_limit(request("llm", *BOTH_MODELS, hits=1))
    assert first.dynamic_metadata == {
        "domain": "llm",
        "descriptors": [{"entries": ["model=primary"]}, {"entries": ["model=fallback"]}],
        # the first descriptor wins a key both give; mappings merge
        "metadata": {
            "backend": {"name": "primary", "pool": "a", "region": "eu"},
            "tier": "gold",
        },
    }
    second = await limiter.should_rate_limit(request("llm", *BOTH_MODELS))
    assert second.dynamic_metadata is not None
    # the fallback's quota is used up: only the primary's metadata, for Envoy to route on
    assert second.dynamic_metadata["metadata"] == {
        "backend": {"name": "primary", "pool": "a"},
        "tier": "gold",
    }


async def test_the_metadata_shows_hits_addend_and_no_metadata_when_none_is_under(
    limiter: Limiter,
) -> None:
    probe = Descriptor((("strict", "m"),), hits_addend=0)
    costly = Request("llm", (Descriptor((("strict", "m"),)),), hits_addend=3)
    decision = await limiter.should_rate_limit(costly)  # 3 > 1: over, nothing merged
    assert decision.dynamic_metadata == {
        "domain": "llm",
        "descriptors": [{"entries": ["strict=m"]}],
        "hitsAddend": 3,
    }
    probed = await limiter.should_rate_limit(Request("llm", (probe,)))
    assert probed.dynamic_metadata is not None
    assert probed.dynamic_metadata["descriptors"] == [{"entries": ["strict=m"], "hitsAddend": 0}]
    assert probed.dynamic_metadata["metadata"] == {"seen": True}


async def test_no_dynamic_metadata_unless_asked(backend: Backend, key_prefix: str) -> None:
    limiter = Limiter(config(RULES), backend, LimiterOptions(key_prefix=key_prefix))
    decision = await limiter.should_rate_limit(request("llm", *BOTH_MODELS))
    assert decision.dynamic_metadata is None


async def test_an_always_limit_is_charged_when_an_if_fits_one_denies(limiter: Limiter) -> None:
    """per_second (if_fits, 50 a second) and tokens (always, 100 a minute) on one descriptor."""

    def hit(cost: int) -> Request:
        return Request("llm", (Descriptor((("mixed", "k"),), hits_addend=cost),))

    def peek() -> Request:
        return Request("llm", (Descriptor((("mixed", "k"),)),))

    denied = await limiter.should_rate_limit(hit(60))  # 60 never fits in 50 a second
    assert denied.overall is OVER
    states = {state.limit.name: state.result for state in await limiter.peek(peek())}
    assert states["tokens"].remaining == 40  # charged in full all the same
    assert states["per_second"].remaining == 50  # charged nothing
