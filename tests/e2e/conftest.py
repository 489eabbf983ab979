"""Fixtures for the end-to-end tests: real Envoy, real ratelimitd, real Redis, on loopback.

Nothing here skips: a missing `envoy` or Redis server binary is an error.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from tests.e2e.harness import CONFIG_DIR, EnvoyProcess, Upstream, service_env
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    """A Redis of the module's own, so that nothing else flushes its counters."""
    with RedisServer(name="e2e-redis") as server:
        yield server


@pytest.fixture(scope="module")
def ratelimitd(module_redis: RedisServer) -> Iterator[ServiceProcess]:
    """`ratelimitd serve` on deploy/config/ (as docker-compose mounts it), counting in Redis."""
    env = service_env(RATELIMITD_REDIS_URL=module_redis.url, RATELIMITD_LOG_LEVEL="warning")
    with ServiceProcess(CONFIG_DIR, env) as service:
        yield service


@pytest.fixture(scope="module")
def envoy(ratelimitd: ServiceProcess, upstream: Upstream) -> Iterator[EnvoyProcess]:
    """deploy/envoy/envoy.yaml as deployed (failure_mode_deny: false), on loopback ports."""
    with EnvoyProcess(
        ratelimitd_port=ratelimitd.grpc_port, upstream_port=upstream.port, failure_mode_deny=False
    ) as proxy:
        proxy.warm_up()
        yield proxy


@pytest.fixture(scope="module")
def rls(ratelimitd: ServiceProcess) -> Iterator[rls_pb2_grpc.RateLimitServiceStub]:
    """A direct gRPC client of the same ratelimitd, to compare its answers with Envoy's."""
    with grpc.insecure_channel(ratelimitd.target) as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)
