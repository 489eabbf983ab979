"""Self-tests for the real-server helpers in :mod:`tests.servers.redis`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
import redis.cluster
import redis.sentinel

from tests.servers import fixtures
from tests.servers.redis import (
    ENV_SERVER_BINARY,
    RedisCluster,
    RedisSentinelSetup,
    RedisServer,
    find_server_binary,
    free_port,
)

# Make the fixtures available here without relying on tests/conftest.py.  (Plain
# assignments rather than ``from ... import``: test parameters with the same
# names would otherwise be flagged by ruff as F811 redefinitions.)
redis_server = fixtures.redis_server
redis_server_session = fixtures.redis_server_session
redis_cluster = fixtures.redis_cluster
redis_sentinel = fixtures.redis_sentinel


def _wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# --------------------------------------------------------------------------- #
# binary / ports
# --------------------------------------------------------------------------- #


def test_find_server_binary_is_executable() -> None:
    path = find_server_binary()
    assert os.access(path, os.X_OK)


def test_find_server_binary_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_server_binary()
    monkeypatch.setenv(ENV_SERVER_BINARY, real)
    assert find_server_binary() == real
    monkeypatch.setenv(ENV_SERVER_BINARY, "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match=ENV_SERVER_BINARY):
        find_server_binary()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536


# --------------------------------------------------------------------------- #
# standalone
# --------------------------------------------------------------------------- #


def test_standalone_set_get_and_restart(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    port = redis_server.port
    with redis_server.client() as c:
        assert c.set("k", "v")
        assert c.get("k") == b"v"
    redis_server.restart()
    assert redis_server.port == port
    with redis.Redis.from_url(redis_server.url) as c:
        assert c.ping()
        assert c.get("k") is None  # no persistence: --save "" --appendonly no

    redis_server.kill()
    assert not redis_server.running
    with pytest.raises(redis.ConnectionError), redis_server.client(retry=None) as c:
        c.ping()
    redis_server.start()
    assert redis_server.port == port
    with redis_server.client() as c:
        assert c.ping()


def test_context_manager_stops_process_and_removes_dir() -> None:
    with RedisServer(extra_args=["--maxmemory", "10mb"]) as server:
        proc = server.process
        directory = server.dir
        assert proc is not None and directory is not None
        with server.client(decode_responses=True) as c:
            assert c.config_get("maxmemory")["maxmemory"] == str(10 * 1024 * 1024)
    assert proc.poll() is not None
    assert not Path(directory).exists()
    assert not server.running


def test_startup_failure_reports_log() -> None:
    server = RedisServer(extra_args=["--no-such-option", "1"])
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*Bad directive"):
        server.start()
    assert not server.running
    assert server.dir is None  # temp dir cleaned up
    server.stop()


def test_session_server(redis_server_session: RedisServer) -> None:
    with redis_server_session.client() as c:
        c.flushall()
        c.set("a", 1)
        assert c.dbsize() == 1


# --------------------------------------------------------------------------- #
# cluster
# --------------------------------------------------------------------------- #


def _keys_per_master(
    client: redis.cluster.RedisCluster, cluster: RedisCluster, count: int = 3
) -> dict[int, list[str]]:
    """Keys such that every master owns ``count`` of them."""
    by_port: dict[int, list[str]] = {m.port: [] for m in cluster.masters}
    i = 0
    while any(len(v) < count for v in by_port.values()):
        key = f"key:{i}"
        i += 1
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        assert node is not None
        if len(by_port[node.port]) < count:
            by_port[node.port].append(key)
    return by_port


def test_cluster_all_masters(redis_cluster: RedisCluster) -> None:
    ports = ",".join(f"127.0.0.1:{m.port}" for m in redis_cluster.masters)
    assert redis_cluster.url == f"redis+cluster://{ports}"
    assert len(redis_cluster.masters) == 3
    assert redis_cluster.replicas == []
    assert len(redis_cluster.nodes) == 3

    for node in redis_cluster.nodes:
        assert node.info("cluster")["cluster_state"] == "ok"

    with redis_cluster.client() as client:
        keys = _keys_per_master(client, redis_cluster)
        for port_keys in keys.values():
            for key in port_keys:
                assert client.set(key, key.upper())
        for port_keys in keys.values():
            for key in port_keys:
                assert client.get(key) == key.upper().encode()

    # Each master really holds its share of the keys.
    for master in redis_cluster.masters:
        with master.client() as c:
            for key in keys[master.port]:
                assert c.get(key) == key.upper().encode()


def test_cluster_with_replicas_failover() -> None:
    with RedisCluster(masters=3, replicas_per_master=1) as cluster:
        assert len(cluster.nodes) == 6
        assert len(cluster.replicas) == 3
        old_master = cluster.masters[0]
        replica = cluster.replicas_of(0)[0]
        assert replica.info("replication")["role"] == "slave"

        with cluster.client() as client:
            key = _keys_per_master(client, cluster, 1)[old_master.port][0]
            client.set(key, "before")
            with replica.client(single_connection_client=True) as rc:
                rc.execute_command("READONLY")
                _wait_until(lambda: rc.get(key) == b"before")

            new_master = cluster.failover(0)

            assert new_master is replica
            assert cluster.masters[0] is replica
            assert cluster.replicas_of(0) == [old_master]
            assert replica.info("replication")["role"] == "master"
            assert old_master.info("replication")["role"] == "slave"
            for node in cluster.nodes:
                assert node.info("cluster")["cluster_state"] == "ok"

        # A fresh client sees the new topology and can write to the moved slots.
        with cluster.client() as client:
            assert client.get(key) == b"before"
            assert client.set(key, "after")
            assert client.get_node_from_key(key).port == replica.port
        with replica.client() as c:
            assert c.get(key) == b"after"


# --------------------------------------------------------------------------- #
# sentinel
# --------------------------------------------------------------------------- #


def test_sentinel_discovers_master(redis_sentinel: RedisSentinelSetup) -> None:
    setup = redis_sentinel
    assert setup.url == f"redis+sentinel://127.0.0.1:{setup.sentinel_port}/mymaster"
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        [("127.0.0.1", setup.sentinel_port)], socket_timeout=5.0
    )
    try:
        master_addr = sentinel.discover_master("mymaster")  # type: ignore[no-untyped-call]
        assert master_addr == (setup.master.host, setup.master.port)
        assert setup.discover_master() == master_addr
        replicas = sentinel.discover_slaves("mymaster")  # type: ignore[no-untyped-call]
        assert (setup.replica.host, setup.replica.port) in replicas

        master = sentinel.master_for("mymaster", socket_timeout=5.0)  # type: ignore[no-untyped-call]
        with master:
            assert master.set("sentinel-key", "v")
            assert master.get("sentinel-key") == b"v"
    finally:
        for client in sentinel.sentinels:
            client.close()
    with setup.replica.client() as c:
        _wait_until(lambda: c.get("sentinel-key") == b"v")
    conf = setup.sentinel.dir
    assert conf is not None and os.access(conf / "sentinel.conf", os.W_OK)
