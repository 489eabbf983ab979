"""Requests through a real Envoy (deploy/envoy/envoy.yaml) are limited by a real ratelimitd
(deploy/config/, counting in a real Redis) exactly as deploy/config/envoy-demo.yaml says.

Every test uses client IPs, API keys or routes of its own, so they do not share counters.
"""

from __future__ import annotations

import re
import time
import urllib.request

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf.wrappers_pb2 import UInt64Value

from tests.e2e.harness import (
    DEMO_DOMAIN,
    UNIT_SECONDS,
    EnvoyProcess,
    assert_limited,
    assert_passed,
    demo_limit,
    get,
    new_client_ip,
    wait_for_window_start,
)
from tests.servers.service import ServiceProcess


def peek(
    rls: rls_pb2_grpc.RateLimitServiceStub, *entries: tuple[str, str]
) -> rls_pb2.RateLimitResponse.DescriptorStatus:
    """ratelimitd's own status for one descriptor, without charging it (hits_addend 0)."""
    descriptor = ratelimit_pb2.RateLimitDescriptor(hits_addend=UInt64Value(value=0))
    for key, value in entries:
        descriptor.entries.add(key=key, value=value)
    reply = rls.ShouldRateLimit(
        rls_pb2.RateLimitRequest(domain=DEMO_DOMAIN, descriptors=[descriptor]), timeout=5
    )
    (status,) = reply.statuses
    return status


def test_per_client_ip(envoy: EnvoyProcess) -> None:
    """Route "/": N per minute per client IP; the (N+1)th is a 429, other IPs still pass."""
    limit = demo_limit("per_ip")["requests_per_unit"]
    wait_for_window_start(60)
    client, other = new_client_ip(), new_client_ip()
    for _ in range(limit):
        assert_passed(get(envoy.port, "/", client_ip=client), "/")
    assert_limited(get(envoy.port, "/", client_ip=client))
    assert_limited(get(envoy.port, "/anything/else", client_ip=client))
    assert_passed(get(envoy.port, "/", client_ip=other), "/")


def test_per_api_key(envoy: EnvoyProcess) -> None:
    """Route "/api/": N per minute per x-api-key, whichever IP sends it; no key, no limit."""
    limit = demo_limit("per_api_key")["requests_per_unit"]
    wait_for_window_start(60)
    key, other_key = "e2e-key-a", "e2e-key-b"
    for _ in range(limit):
        reply = get(envoy.port, "/api/items", client_ip=new_client_ip(), headers={"x-api-key": key})
        assert_passed(reply, "/api/items")
    assert_limited(
        get(envoy.port, "/api/items", client_ip=new_client_ip(), headers={"x-api-key": key})
    )
    assert_passed(
        get(envoy.port, "/api/items", client_ip=new_client_ip(), headers={"x-api-key": other_key}),
        "/api/items",
    )
    # Without the header Envoy's request_headers action produces no descriptor at all.
    anonymous = new_client_ip()
    for _ in range(limit + 2):
        reply = get(envoy.port, "/api/items", client_ip=anonymous)
        assert_passed(reply, "/api/items")
        assert "x-ratelimit-limit" not in reply.headers


def test_per_route(envoy: EnvoyProcess) -> None:
    """Route "/search": one budget of N per minute shared by every client."""
    limit = demo_limit("per_route")["requests_per_unit"]
    wait_for_window_start(60)
    for _ in range(limit):
        assert_passed(get(envoy.port, "/search", client_ip=new_client_ip()), "/search")
    assert_limited(get(envoy.port, "/search", client_ip=new_client_ip()))
    assert_limited(get(envoy.port, "/search", client_ip=new_client_ip()))
    # Other routes are untouched by the route's budget.
    assert_passed(get(envoy.port, "/", client_ip=new_client_ip()), "/")


def test_ratelimit_headers_match_ratelimitd(
    envoy: EnvoyProcess, rls: rls_pb2_grpc.RateLimitServiceStub
) -> None:
    """x-ratelimit-limit/-remaining/-reset are ratelimitd's status for the descriptor, on the
    passing requests and on the 429."""
    configured = demo_limit("per_api_key")
    limit, window = configured["requests_per_unit"], UNIT_SECONDS[configured["unit"]]
    wait_for_window_start(window)
    key = "e2e-key-headers"
    for sent in range(1, limit + 2):
        reply = get(
            envoy.port, "/api/orders", client_ip=new_client_ip(), headers={"x-api-key": key}
        )
        status = peek(rls, ("route", "api"), ("api_key", key))
        if sent <= limit:
            assert_passed(reply, "/api/orders")
        else:
            assert_limited(reply)
        # A check that costs nothing is OVER_LIMIT once nothing is left.
        exhausted = sent >= limit
        assert status.code == (
            rls_pb2.RateLimitResponse.OVER_LIMIT if exhausted else rls_pb2.RateLimitResponse.OK
        )
        header_limit, header_remaining, header_reset = reply.ratelimit
        current = status.current_limit
        assert current.requests_per_unit == limit
        assert current.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
        assert current.name == configured["name"]
        # draft-03: the limit of the tightest status, then its quota policy.
        assert header_limit == f'{limit}, {limit};w={window};name="{configured["name"]}"'
        assert header_remaining == status.limit_remaining == max(limit - sent, 0)
        assert header_reset is not None
        assert abs(header_reset - status.duration_until_reset.seconds) <= 1
        window_left = window - time.time() % window
        assert abs(header_reset - window_left) <= 1.5


def test_shadow_mode_rule_never_limits(envoy: EnvoyProcess) -> None:
    """Route "/export" has a shadow_mode rule: counted (remaining drops to 0) but every
    request passes."""
    limit = demo_limit("export_per_ip")["requests_per_unit"]
    wait_for_window_start(60)
    client = new_client_ip()
    before = envoy.ratelimit_counters()["over_limit"]
    remaining = []
    for _ in range(limit + 3):
        reply = get(envoy.port, "/export", client_ip=client)
        assert_passed(reply, "/export")
        assert "x-envoy-ratelimited" not in reply.headers
        remaining.append(reply.ratelimit[1])
    assert remaining == [*range(limit - 1, -1, -1), 0, 0, 0]
    assert envoy.ratelimit_counters()["over_limit"] == before


def test_shadow_mode_rule_shows_in_metrics(envoy: EnvoyProcess, ratelimitd: ServiceProcess) -> None:
    """The over-limit hits that shadow mode let through are counted, per rule, in /metrics."""
    limit = demo_limit("export_per_ip")["requests_per_unit"]
    wait_for_window_start(60)
    before = shadow_mode_hits(ratelimitd)
    client = new_client_ip()
    for _ in range(limit + 2):
        assert_passed(get(envoy.port, "/export", client_ip=client), "/export")
    assert shadow_mode_hits(ratelimitd) - before == 2


def shadow_mode_hits(ratelimitd: ServiceProcess) -> float:
    """`ratelimitd_shadow_mode_total` of the envoy-demo rules on /export."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ratelimitd.http_port}/metrics") as reply:
        exposition = reply.read().decode()
    total = 0.0
    for line in exposition.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"] == "ratelimitd_shadow_mode_total":
            labels = dict(LABEL.findall(match["labels"]))
            if labels.get("domain") == DEMO_DOMAIN and "export" in labels.get("rule", ""):
                total += float(match["value"])
    return total


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def test_token_bucket_burst(envoy: EnvoyProcess) -> None:
    """Route "/upload": a token bucket of `burst` tokens refilled at requests_per_unit per
    unit. A fresh client gets `burst` at once, then one request per refill interval."""
    configured = demo_limit("upload_per_ip")
    assert configured["algorithm"] == "token_bucket"
    burst = configured["burst"]
    refill = UNIT_SECONDS[configured["unit"]] / configured["requests_per_unit"]  # s per token
    client = new_client_ip()
    started = time.monotonic()
    for sent in range(1, burst + 1):
        reply = get(envoy.port, "/upload", client_ip=client)
        assert_passed(reply, "/upload")
        assert reply.ratelimit[1] == burst - sent
    denied = get(envoy.port, "/upload", client_ip=client)
    assert time.monotonic() - started < refill, "too slow to test the burst"
    assert_limited(denied)
    assert denied.ratelimit[1] == 0
    # When denied, the reset header is the wait for the next token.
    assert denied.ratelimit[2] is not None and denied.ratelimit[2] <= refill
    time.sleep(refill + 0.2)
    assert_passed(get(envoy.port, "/upload", client_ip=client), "/upload")
    assert_limited(get(envoy.port, "/upload", client_ip=client))
