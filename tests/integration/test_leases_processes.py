"""Concurrency limits hold exactly when several processes share one Redis or one Cluster
(issue 21, item 4): no more leases than `max_in_flight` are ever held at once."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from threading import Barrier

import pytest

from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.leases import Leases
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.model import Descriptor
from tests.helpers import config
from tests.servers.redis import RedisCluster, RedisServer

MAX_IN_FLIGHT = 5
PROCESSES = 4
RULES = f"""
domain: jobs
descriptors:
  - key: queue
    rate_limit: {{algorithm: concurrency, max_in_flight: {MAX_IN_FLIGHT}, lease_ttl_s: 30}}
  - key: tenant
    rate_limit: {{algorithm: concurrency, max_in_flight: {MAX_IN_FLIGHT}, lease_ttl_s: 30}}
"""


def leases_for(url: str, prefix: str) -> Leases:
    backend = RedisBackend(RedisOptions(url=url, timeout_s=10.0))
    return Leases(Limiter(config(RULES), backend, LimiterOptions(key_prefix=prefix)))


async def burst(url: str, prefix: str, barrier: Barrier) -> int:
    """Everyone at once: 20 acquires per process on one key, none released."""
    leases = leases_for(url, prefix)
    await asyncio.to_thread(barrier.wait)
    descriptors = (Descriptor((("queue", "burst"),)),)
    results = await asyncio.gather(*(leases.acquire("jobs", descriptors) for _ in range(20)))
    await leases.limiter.backend.close()
    return sum(lease.allowed for lease in results)


async def churn(url: str, prefix: str, barrier: Barrier, rounds: int) -> int:
    """Acquire on two keys, check how many are held, release: many times, in 8 tasks."""
    leases = leases_for(url, prefix)
    backend = leases.limiter.backend
    descriptors = (Descriptor((("queue", "churn"),)), Descriptor((("tenant", "t1"),)))
    base = f"{prefix}{{jobs|queue=churn}}:cc"
    most = 0

    async def worker() -> None:
        nonlocal most
        for _ in range(rounds):
            lease = await leases.acquire("jobs", descriptors)
            if lease.allowed:
                (held,) = await backend._execute([("ZCARD", base)])
                most = max(most, int(held))
                assert await leases.release(lease.id)

    await asyncio.to_thread(barrier.wait)
    await asyncio.gather(*(worker() for _ in range(8)))
    await backend.close()
    return most


def run_burst(url: str, prefix: str, barrier: Barrier) -> int:
    return asyncio.run(burst(url, prefix, barrier))


def run_churn(url: str, prefix: str, barrier: Barrier) -> int:
    return asyncio.run(churn(url, prefix, barrier, 60))


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_processes_never_hold_more_than_max_in_flight(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if kind == "redis" else "redis_cluster"
    )
    context = multiprocessing.get_context("spawn")
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    with context.Manager() as manager, context.Pool(PROCESSES) as pool:
        barrier = manager.Barrier(PROCESSES)
        admitted = pool.starmap(run_burst, [(server.url, prefix, barrier)] * PROCESSES)
        assert sum(admitted) == MAX_IN_FLIGHT
        most = pool.starmap(run_churn, [(server.url, prefix, barrier)] * PROCESSES)
    assert 1 <= max(most) <= MAX_IN_FLIGHT
