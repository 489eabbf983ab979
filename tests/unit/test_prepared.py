"""Request bodies are prepared once and reused, never across a config change."""

from __future__ import annotations

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.errors import InvalidRequest
from ratelimitd.limiter import Limiter
from ratelimitd.model import Code
from ratelimitd.services.prepared import PreparedRequests
from tests.helpers import config

RULES = """
domain: edge
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 2}
"""


def body(value: str, hits: int = 0, domain: str = "edge") -> bytes:
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="ip", value=value)]
    )
    return rls_pb2.RateLimitRequest(
        domain=domain, descriptors=[descriptor], hits_addend=hits
    ).SerializeToString()


def test_the_same_body_is_prepared_once() -> None:
    requests = PreparedRequests(Limiter(config(RULES), MemoryBackend()))
    first = requests.prepare(body("1.2.3.4"))
    assert requests.prepare(body("1.2.3.4")) is first
    assert requests.prepare(body("1.2.3.5")) is not first
    assert requests.prepare(body("1.2.3.4", hits=3)).counters[0].cost == 3
    assert len(requests) == 3


async def test_a_new_config_is_used_at_once_for_a_body_seen_before() -> None:
    limiter = Limiter(config(RULES), MemoryBackend())
    requests = PreparedRequests(limiter)
    same = body("1.2.3.4")
    assert (await limiter.decide(requests.prepare(same))).statuses[0].remaining == 1
    limiter.config = config(RULES.replace("requests_per_unit: 2", "requests_per_unit: 10"))
    decision = await limiter.decide(requests.prepare(same))
    assert decision.statuses[0].limit is not None
    assert decision.statuses[0].limit.requests_per_unit == 10
    assert decision.statuses[0].remaining == 8
    assert len(requests) == 1  # the stale entries went with the old config
    limiter.config = config("domain: other\n")
    assert (await limiter.decide(requests.prepare(same))).statuses[0].limit is None


def test_the_memo_is_bounded_in_entries_and_body_size() -> None:
    requests = PreparedRequests(Limiter(config(RULES), MemoryBackend()), max_entries=5, max_body=60)
    for n in range(12):
        requests.prepare(body(f"10.0.0.{n}"))
        assert len(requests) <= 5
    large = body("x" * 100)
    before = len(requests)
    requests.prepare(large)
    assert len(requests) == before
    assert requests.prepare(large) is not requests.prepare(large)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xff\xff", "malformed request"),
        (
            rls_pb2.RateLimitRequest(domain="edge").SerializeToString(),
            "descriptors must not be empty",
        ),
        (body("1.2.3.4", domain=""), "domain must not be empty"),
    ],
)
def test_bad_bodies_are_invalid_requests_and_not_remembered(raw: bytes, message: str) -> None:
    requests = PreparedRequests(Limiter(config(RULES), MemoryBackend()))
    for _ in range(2):
        with pytest.raises(InvalidRequest, match=message):
            requests.prepare(raw)
    assert len(requests) == 0


async def test_decide_many_is_decide_for_each() -> None:
    limiter = Limiter(config(RULES), MemoryBackend())
    requests = PreparedRequests(limiter)
    batch = [requests.prepare(body("a", hits=1)) for _ in range(3)] + [
        requests.prepare(body("b", hits=1))
    ]
    decisions = await limiter.decide_many(batch)
    assert [d.overall for d in decisions if not isinstance(d, Exception)] == [
        Code.OK,
        Code.OK,
        Code.OVER_LIMIT,
        Code.OK,
    ]
    assert await limiter.decide_many([]) == []
