"""Load against real `ratelimitd serve` processes on Redis.

- Many concurrent client streams against one replica: no errors, and exact admission: every
  hot counter admits exactly `min(limit, calls)`, and the admitted calls' `limit_remaining`
  values are exactly limit-1, limit-2, ... (nothing admitted twice, nothing lost), for each
  algorithm. 200 streams for 3 s always; 1,000 streams for 60 s in the long suite.
- The service's RSS stays within 10 % over a 5-minute soak (long suite).
- Two replicas restarted in turn under load: a client that retries on the other replica sees
  no call fail, and the counts stay exact.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.reliability.conftest import Record
from tests.reliability.harness import (
    DECISION,
    OVER_LIMIT,
    Call,
    Load,
    percentile,
    rl_request,
    rss_bytes,
    tally,
)
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
HOT_KEYS = 10
STREAMS_PER_CHANNEL = 50
# clients that come back quickly after a replica restarts (grpc's default backoff starts at 1 s)
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def rules(limit: int) -> str:
    """One rule per algorithm, a year long: no window edge and no refill worth one hit."""
    lines = ["domain: load", "descriptors:"]
    for algorithm in ALGORITHMS:
        lines += [
            f"  - key: {algorithm}",
            f"    rate_limit: {{unit: year, requests_per_unit: {limit}, algorithm: {algorithm}}}",
        ]
    lines += [
        "  - key: user",
        "    detailed_metric: true",
        "    rate_limit: {unit: second, requests_per_unit: 1000000}",
    ]
    return "\n".join(lines) + "\n"


COMBOS = [(algorithm, f"hot{i}") for algorithm in ALGORITHMS for i in range(HOT_KEYS)]


def hot_request(stream: int, n: int) -> tuple[str, rls_pb2.RateLimitRequest]:
    algorithm, value = COMBOS[(stream * 7 + n) % len(COMBOS)]
    return f"{algorithm}/{value}", rl_request("load", [(algorithm, value)])


@dataclass
class Admissions:
    calls: int
    admitted: int
    remaining: list[int]


def admissions(calls: Sequence[Call]) -> dict[str, Admissions]:
    by_key: dict[str, Admissions] = defaultdict(lambda: Admissions(0, 0, []))
    for call in calls:
        entry = by_key[call.key]
        entry.calls += 1
        if call.outcome == DECISION:
            entry.admitted += 1
            assert call.remaining is not None
            entry.remaining.append(call.remaining)
    return by_key


def check_exact(calls: Sequence[Call], limit: int) -> dict[str, Admissions]:
    """Every hot counter admitted exactly min(limit, calls), each remaining value once."""
    outcomes = tally(calls)
    assert set(outcomes) <= {DECISION, OVER_LIMIT}, outcomes  # no errors at all
    per_key = admissions(calls)
    assert len(per_key) == len(COMBOS)
    for key, seen in per_key.items():
        assert seen.admitted == min(limit, seen.calls), (key, seen.admitted, seen.calls)
        assert sorted(seen.remaining, reverse=True) == list(
            range(limit - 1, limit - 1 - seen.admitted, -1)
        ), key
    return per_key


def load_figures(calls: Sequence[Call], limit: int) -> dict[str, object]:
    latencies = [c.latency for c in calls]
    per_key = admissions(calls)
    span = max(c.ended for c in calls) - min(c.started for c in calls)
    return {
        "calls": len(calls),
        "outcomes": tally(calls),
        "admitted_per_counter": sorted({s.admitted for s in per_key.values()}),
        "calls_per_counter_min": min(s.calls for s in per_key.values()),
        "limit": limit,
        "calls_per_s": round(len(calls) / span),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return tmp_path / "rules.yaml"


def service_env(redis_server: RedisServer) -> dict[str, str | None]:
    return {
        "RATELIMITD_REDIS_URL": redis_server.url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "2000",  # load, not faults, is under test here
        "RATELIMITD_LOG_LEVEL": "warning",
    }


def stubs_for(
    targets: Sequence[str], streams: int
) -> tuple[list[grpc.aio.Channel], list[rls_pb2_grpc.RateLimitServiceStub]]:
    count = max(1, streams // STREAMS_PER_CHANNEL)
    channels = [
        grpc.aio.insecure_channel(targets[i % len(targets)], options=CHANNEL_OPTIONS)
        for i in range(count * len(targets))
    ]
    return channels, [rls_pb2_grpc.RateLimitServiceStub(channel) for channel in channels]


async def run_load(target: str, streams: int, seconds: float) -> list[Call]:
    channels, stubs = stubs_for([target], streams)
    try:
        load = Load(stubs, hot_request, streams, timeout_s=30).start()
        await asyncio.sleep(seconds)
        return await load.stop()
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.parametrize(
    ("streams", "seconds", "limit"),
    [
        pytest.param(200, 3.0, 50, id="200-streams-3s"),
        pytest.param(1000, 60.0, 1000, id="1000-streams-60s", marks=pytest.mark.slow),
    ],
)
async def test_concurrent_streams_against_one_replica_admit_exactly(
    streams: int,
    seconds: float,
    limit: int,
    rules_file: Path,
    redis_server: RedisServer,
    figures: Record,
) -> None:
    rules_file.write_text(rules(limit))
    with ServiceProcess(rules_file, service_env(redis_server)) as service:
        calls = await run_load(service.target, streams, seconds)
        log = service.log()
    figures(streams=streams, seconds=seconds, **load_figures(calls, limit))
    check_exact(calls, limit)
    assert "Traceback" not in log, log


@pytest.mark.slow
async def test_rss_stays_flat_over_a_five_minute_soak(
    rules_file: Path, redis_server: RedisServer, figures: Record
) -> None:
    """Unique values on every call (so nothing the service keeps per value could hide), and
    the hot counters too; RSS after the first minute may not grow by more than 10 %."""
    rules_file.write_text(rules(10**9))
    minutes, warm_up_s, interval_s = 5, 60, 10
    churn = iter(range(10**12))

    def request_for(stream: int, n: int) -> tuple[str, rls_pb2.RateLimitRequest]:
        key, request = hot_request(stream, n)
        value = f"u{next(churn)}"
        request.descriptors.add().entries.add(key="user", value=value)
        return key, request

    with ServiceProcess(rules_file, service_env(redis_server)) as service:
        assert service.process is not None
        pid = service.process.pid
        channels, stubs = stubs_for([service.target], 200)
        load = Load(stubs, request_for, 200, timeout_s=30).start()
        samples: list[tuple[float, int]] = []
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < minutes * 60:
            samples.append((round(elapsed), rss_bytes(pid)))
            await asyncio.sleep(interval_s)
        calls = await load.stop()
        for channel in channels:
            await channel.close()
        log = service.log()
    baseline = max(rss for at, rss in samples if at <= warm_up_s)
    later = [rss for at, rss in samples if at > warm_up_s]
    figures(
        calls=len(calls),
        outcomes=tally(calls),
        rss_mib_at_1min=round(baseline / 2**20, 1),
        rss_mib_max_after=round(max(later) / 2**20, 1),
        rss_mib_samples=[round(rss / 2**20, 1) for _, rss in samples],
    )
    assert set(tally(calls)) == {DECISION}
    assert max(later) <= baseline * 1.10
    assert "Traceback" not in log


# --------------------------------------------------------------------------------------- #
# Two replicas restarted in turn
# --------------------------------------------------------------------------------------- #


@dataclass
class Answer:
    key: str
    reply: rls_pb2.RateLimitResponse | None
    attempts: int
    errors: list[str]


async def retrying_call(
    stubs: Sequence[rls_pb2_grpc.RateLimitServiceStub],
    first: int,
    key: str,
    request: rls_pb2.RateLimitRequest,
    give_up_s: float = 10.0,
) -> Answer:
    """What a client in front of two replicas does: on an error, try the other one."""
    errors: list[str] = []
    began = time.monotonic()
    attempt = 0
    while time.monotonic() - began < give_up_s:
        stub = stubs[(first + attempt) % len(stubs)]
        attempt += 1
        try:
            reply = await stub.ShouldRateLimit(request, timeout=5)
            return Answer(key, reply, attempt, errors)
        except grpc.aio.AioRpcError as exc:
            errors.append(exc.code().name)
            if attempt % len(stubs) == 0:
                await asyncio.sleep(0.05)
    return Answer(key, None, attempt, errors)


async def test_two_replicas_restarted_in_turn_under_load(
    rules_file: Path, redis_server: RedisServer, figures: Record
) -> None:
    limit, streams = 100, 40
    rules_file.write_text(rules(limit))
    env = service_env(redis_server) | {"RATELIMITD_SHUTDOWN_GRACE_S": "5"}
    with ServiceProcess(rules_file, env) as first, ServiceProcess(rules_file, env) as second:
        channels = [
            grpc.aio.insecure_channel(s.target, options=CHANNEL_OPTIONS) for s in (first, second)
        ]
        stubs = [rls_pb2_grpc.RateLimitServiceStub(channel) for channel in channels]
        answers: list[Answer] = []
        running = True

        async def stream(index: int) -> None:
            n = 0
            while running:
                key, request = hot_request(index, n)
                n += 1
                answers.append(await retrying_call(stubs, index, key, request))

        tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
        restarts = []
        await asyncio.sleep(1.0)
        for service in (first, second):
            began = time.monotonic()
            await asyncio.to_thread(service.stop)
            await asyncio.to_thread(service.start)  # back, and healthy
            restarts.append(round(time.monotonic() - began, 2))
            await asyncio.sleep(1.0)
        running = False
        await asyncio.gather(*tasks)
        for channel in channels:
            await channel.close()
        logs = first.log() + second.log()

    failed = [a for a in answers if a.reply is None]
    retried = [a for a in answers if a.attempts > 1]
    calls = [
        Call(
            0,
            a.key,
            0.0,
            0.0,
            DECISION if a.reply.overall_code == rls_pb2.RateLimitResponse.OK else OVER_LIMIT,
            a.reply.statuses[0].limit_remaining,
        )
        for a in answers
        if a.reply is not None
    ]
    figures(
        calls=len(answers),
        failed_after_retries=len(failed),
        retried=len(retried),
        first_attempt_errors=tally(
            [Call(0, "", 0, 0, a.errors[0], None) for a in retried]  # what made them retry
        ),
        restart_seconds=restarts,
        admitted_per_counter=sorted({s.admitted for s in admissions(calls).values()}),
        limit=limit,
    )
    assert not failed, failed[:3]
    assert retried, "no call met a restarting replica: the test proved nothing"
    check_exact(calls, limit)
    assert "Traceback" not in logs, logs
