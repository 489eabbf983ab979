"""Exactness across replicas: three `ratelimitd serve` processes on one Redis Cluster.

For each algorithm, 2,000 hits at once on 10 hot counters (200 each, limit 50), spread over
the three processes: every counter admits exactly its limit, and the admitted calls'
`limit_remaining` values are exactly 49, 48, ... 0.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimitd.config import config_from_texts
from tests.reliability.conftest import Record
from tests.reliability.harness import rl_request
from tests.servers.redis import RedisCluster
from tests.servers.service import ServiceProcess

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
HOT_KEYS, HITS, LIMIT, REPLICAS = 10, 2000, 50, 3
RULES = "domain: exact\ndescriptors:\n" + "".join(
    f"  - key: {algorithm}\n"
    f"    rate_limit: {{unit: year, requests_per_unit: {LIMIT}, algorithm: {algorithm}}}\n"
    for algorithm in ALGORITHMS
)


@pytest.fixture(scope="module")
def replicas(
    redis_cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    rules = tmp_path_factory.mktemp("exact") / "rules.yaml"
    rules.write_text(RULES)
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": redis_cluster.url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "5000",
        "RATELIMITD_KEY_PREFIX": "exact:",
    }
    services = [ServiceProcess(rules, env) for _ in range(REPLICAS)]
    try:
        for service in services:
            service.start()
        yield services
    finally:
        for service in services:
            service.stop()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_three_replicas_on_a_cluster_admit_exactly_the_limit(
    algorithm: str, replicas: list[ServiceProcess], figures: Record
) -> None:
    channels = [grpc.aio.insecure_channel(s.target) for s in replicas]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(channel) for channel in channels]
    keys = [f"hot{i}" for i in range(HOT_KEYS)]
    try:
        replies = await asyncio.gather(
            *(
                stubs[n % REPLICAS].ShouldRateLimit(
                    rl_request("exact", [(algorithm, keys[n % HOT_KEYS])]), timeout=60
                )
                for n in range(HITS)
            )
        )
    finally:
        for channel in channels:
            await channel.close()
    admitted: Counter[str] = Counter()
    remaining: dict[str, list[int]] = defaultdict(list)
    by_replica: Counter[int] = Counter()
    for n, reply in enumerate(replies):
        if reply.overall_code == rls_pb2.RateLimitResponse.OK:
            admitted[keys[n % HOT_KEYS]] += 1
            remaining[keys[n % HOT_KEYS]].append(reply.statuses[0].limit_remaining)
            by_replica[n % REPLICAS] += 1
    figures(
        algorithm=algorithm,
        replicas=REPLICAS,
        hits=HITS,
        limit_per_counter=LIMIT,
        admitted_per_counter=sorted(set(admitted.values())),
        admitted_by_replica=dict(sorted(by_replica.items())),
    )
    assert admitted == dict.fromkeys(keys, LIMIT)
    for key in keys:
        assert sorted(remaining[key]) == list(range(LIMIT)), key


def test_the_rules_load() -> None:
    assert sorted(config_from_texts([("r.yaml", RULES)]).domains) == ["exact"]
