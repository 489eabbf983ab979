"""Pytest fixtures that provide real Redis-compatible servers.

Load them as a plugin from the root ``tests/conftest.py``::

    pytest_plugins = ["tests.servers.fixtures"]

All fixtures are plain synchronous fixtures, so they can be used from both
sync and async tests.  They never skip: if no server binary can be found,
:func:`tests.servers.redis.find_server_binary` raises and the test errors.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.redis import RedisCluster, RedisSentinelSetup, RedisServer

__all__ = ["redis_cluster", "redis_sentinel", "redis_server", "redis_server_session"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh standalone server for one test."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """A standalone server shared by the whole session; tests FLUSHALL it themselves."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A session-wide 3-master cluster without replicas."""
    with RedisCluster(masters=3, replicas_per_master=0) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelSetup]:
    """A session-wide master + replica + sentinel (master name ``mymaster``)."""
    with RedisSentinelSetup() as setup:
        yield setup
