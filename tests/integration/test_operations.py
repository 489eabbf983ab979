"""Operations on a real server: metrics, /json, /rlconfig, deadlines, hot reload."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ratelimitd.app import App
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import FakeClock
from ratelimitd.config import load_config
from tests.integration.conftest import StartServer
from tests.integration.test_grpc_server import OK, OVER, rl_request
from tests.servers.redis import RedisServer

RULES = """
domain: ops
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: user
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 100}
"""


def http(app: App, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{app.http_port}{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def metric(app: App, name: str, **labels: str) -> float:
    _, body = await asyncio.to_thread(http, app, "/metrics")
    wanted = tuple(sorted(labels.items()))
    return samples(body.decode(), name).get(wanted, 0.0)


async def test_per_rule_metrics_after_a_known_sequence(
    start_server: StartServer, channel_to
) -> None:
    app = await start_server(RULES, clock=FakeClock(1_700_000_100.0))
    stub = channel_to(app)
    for _ in range(12):  # 10 within the limit, the last 3 of those near it, 2 over
        await stub.ShouldRateLimit(rl_request([("ip", "a")], domain="ops"))
    for _ in range(3):  # 2 within, 1 over but let through
        await stub.ShouldRateLimit(rl_request([("trial", "t")], domain="ops"))
    await stub.ShouldRateLimit(rl_request([("ip", "b")], domain="ops", hits=4))

    rule = {"domain": "ops", "rule": "ip"}
    assert await metric(app, "ratelimitd_total_hits_total", **rule) == 16
    assert await metric(app, "ratelimitd_within_limit_total", **rule) == 14
    assert (
        await metric(app, "ratelimitd_near_limit_total", **rule) == 2
    )  # the 9th and 10th hit of a
    assert await metric(app, "ratelimitd_over_limit_total", **rule) == 2
    trial = {"domain": "ops", "rule": "trial"}
    assert await metric(app, "ratelimitd_total_hits_total", **trial) == 3
    assert await metric(app, "ratelimitd_over_limit_total", **trial) == 1
    assert await metric(app, "ratelimitd_shadow_mode_total", **trial) == 1
    assert await metric(app, "ratelimitd_config_info", hash=app.config.content_hash) == 1
    assert (
        await metric(app, "ratelimitd_request_duration_seconds_count", method="ShouldRateLimit")
        >= 16
    )


async def test_detailed_metric_values_are_capped(start_server: StartServer, channel_to) -> None:
    app = await start_server(RULES, detailed_metric_max_values=5)
    stub = channel_to(app)
    for n in range(50):
        await stub.ShouldRateLimit(rl_request([("user", f"u{n}")], domain="ops"))
    _, body = await asyncio.to_thread(http, app, "/metrics")
    series = [
        labels
        for labels in samples(body.decode(), "ratelimitd_total_hits_total")
        if ("domain", "ops") in labels
    ]
    user_series = sorted(
        dict(labels)["rule"] for labels in series if dict(labels)["rule"].startswith("user_")
    )
    assert user_series == ["user__other_", "user_u0", "user_u1", "user_u2", "user_u3", "user_u4"]
    assert await metric(app, "ratelimitd_total_hits_total", domain="ops", rule="user__other_") == 45


async def test_json_endpoint(start_server: StartServer) -> None:
    app = await start_server(RULES, clock=FakeClock(1_700_000_100.0))
    body = json.dumps(
        {
            "domain": "ops",
            "descriptors": [{"entries": [{"key": "ip", "value": "j"}]}],
            "hitsAddend": 10,
        }
    ).encode()
    status, reply = await asyncio.to_thread(http, app, "/json", body)
    assert status == 200
    answer = json.loads(reply)
    assert answer["overallCode"] == "OK"
    assert answer["statuses"][0]["currentLimit"] == {"requestsPerUnit": 10, "unit": "MINUTE"}
    status, reply = await asyncio.to_thread(http, app, "/json", body)
    assert status == 429 and json.loads(reply)["overallCode"] == "OVER_LIMIT"
    status, reply = await asyncio.to_thread(http, app, "/json", b"{not json")
    assert status == 400 and reply.startswith(b"bad request: ")
    status, reply = await asyncio.to_thread(http, app, "/json", b'{"domain": ""}')
    assert (status, reply) == (400, b"invalid request: domain must not be empty\n")
    status, _ = await asyncio.to_thread(http, app, "/json")
    assert status == 405  # GET


async def test_rlconfig_prints_one_line_per_rule(start_server: StartServer) -> None:
    app = await start_server(RULES)
    status, body = await asyncio.to_thread(http, app, "/rlconfig")
    assert status == 200
    assert body.decode().splitlines() == [
        "ops.ip: 10 per minute (fixed_window)",
        "ops.trial: 2 per minute (fixed_window) [shadow]",
        "ops.user: 100 per minute (fixed_window)",
    ]


async def test_an_expired_deadline_is_not_sent_to_redis(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    """Calls queued behind a slow round trip are dropped unsent once their deadline passes.

    grpc.aio cancels their handlers at the deadline; the batcher skips cancelled entries.
    """
    # one batch out at a time, so that the hurried calls queue behind the slow one
    backend = RedisBackend(RedisOptions(url=redis_server.url, timeout_s=5.0, max_in_flight=1))
    app = await start_server(RULES, backend=backend)
    assert redis_server.process is not None
    pid = redis_server.process.pid
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        await stub.ShouldRateLimit(rl_request([("ip", "warm")], domain="ops"))
        commands = backend.commands
        os.kill(pid, signal.SIGSTOP)
        try:
            slow = asyncio.ensure_future(
                stub.ShouldRateLimit(rl_request([("ip", "slow")], domain="ops"))
            )
            while backend.commands == commands:  # noqa: ASYNC110 - until the slow call is out
                await asyncio.sleep(0.01)
            hurried = [
                stub.ShouldRateLimit(rl_request([("ip", f"d{n}")], domain="ops"), timeout=0.1)
                for n in range(10)
            ]
            results = await asyncio.gather(*hurried, return_exceptions=True)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await slow).overall_code == OK
    assert [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)] == [
        grpc.StatusCode.DEADLINE_EXCEEDED
    ] * 10
    await asyncio.sleep(0.2)
    assert backend.commands == commands + 1  # only the slow call was ever sent


RELOAD_BEFORE = """
domain: live
descriptors:
  - key: ip
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: other
    rate_limit: {unit: hour, requests_per_unit: 100}
"""
RELOAD_AFTER = RELOAD_BEFORE.replace("requests_per_unit: 100", "requests_per_unit: 1")


async def test_reload_by_file_change_keeps_counters_and_rejects_bad_configs(
    tmp_path: Path, start_server: StartServer, channel_to
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RELOAD_BEFORE)
    app = await start_server(
        RELOAD_BEFORE, config=str(rules), config_poll_s=0.05, clock=FakeClock(1_700_000_100.0)
    )
    app.apply_config(load_config([rules]))
    stub = channel_to(app)
    assert (await stub.ShouldRateLimit(rl_request([("ip", "1")], domain="live"))).overall_code == OK
    assert (await stub.ShouldRateLimit(rl_request([("ip", "1")], domain="live"))).overall_code == OK

    errors_before = await metric(app, "ratelimitd_config_loads_total", result="error")
    rules.write_text("domain: live\ndescriptors:\n  - key: ip\n    rate_limit: {unit: fortnight}\n")
    await wait_for(
        lambda: metric(app, "ratelimitd_config_loads_total", result="error"), errors_before + 1
    )
    # the bad file was refused: the old rules still serve
    assert "live.other: 100 per hour" in "\n".join(app.config.describe_rules())

    rules.write_text(RELOAD_AFTER)
    await wait_for(lambda: _rule_line(app), "live.other: 1 per hour (fixed_window)")
    # the unchanged rule kept its count: one hit left of three
    replies = [
        await stub.ShouldRateLimit(rl_request([("ip", "1")], domain="live")) for _ in range(2)
    ]
    assert [r.overall_code for r in replies] == [OK, OVER]
    codes = [
        (await stub.ShouldRateLimit(rl_request([("other", "x")], domain="live"))).overall_code
        for _ in range(2)
    ]
    assert codes == [OK, OVER]


async def _rule_line(app: App) -> str:
    return next(line for line in app.config.describe_rules() if line.startswith("live.other"))


async def wait_for(probe, expected, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await probe() == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never became {expected!r}; last {await probe()!r}")
