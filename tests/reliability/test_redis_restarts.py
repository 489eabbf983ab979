"""Redis killed and restarted, and a Cluster master failed over to its replica, under load.

The same load and checks as the network faults (scenario.py). A Redis restarted without
persistence comes back empty: that is the one way a counter goes back, and the test shows it
does (docs/reliability.md says so). With `appendfsync always` every admitted hit survives a
SIGKILL and no counter goes back. A manual Cluster failover (`CLUSTER FAILOVER`, the replica
catches up before it takes over) loses nothing either.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import redis

from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.keys import identity
from tests.reliability.conftest import Record, Serve
from tests.reliability.scenario import RULES, TIMEOUT_S, Fault, check, under_load
from tests.reliability.test_faults import no_tracebacks
from tests.servers.redis import RedisCluster, RedisServer

AOF_ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")


def clients_of(servers: list[RedisServer]) -> int:
    """Client connections the servers hold, less the one asking each."""
    total = 0
    for server in servers:
        with contextlib.suppress(redis.RedisError, OSError):
            total += int(server.info("clients")["connected_clients"]) - 1
    return total


@pytest.mark.parametrize("persistence", ["none", "aof-always"])
async def test_redis_killed_and_restarted_under_load(
    persistence: str, serve: Serve, figures: Record, caplog: pytest.LogCaptureFixture
) -> None:
    extra = AOF_ALWAYS if persistence == "aof-always" else ()
    with RedisServer(extra_args=extra) as server:
        backend = RedisBackend(RedisOptions(url=server.url, timeout_s=TIMEOUT_S))
        service = await serve(RULES, backend=backend, health_interval_s=0.2)
        with caplog.at_level(logging.INFO):
            outcome = await under_load(
                service,
                Fault(
                    inject=server.kill,
                    heal=server.start,
                    connections=lambda: clients_of([server]),
                ),
            )
        figures(fault=f"redis SIGKILL + restart, persistence {persistence}", **outcome.figures())
        survive = persistence == "aof-always"
        check(outcome, "error", "failures", counters_survive=survive)
        before, after = outcome.probe_around_fault()
        assert before is not None and after is not None
        if survive:
            assert after < before
        else:
            # documented: a Redis without persistence restarts empty, so counters start again
            assert after > before and max(outcome.remaining()) == 10**9 - 1
        no_tracebacks(caplog)


@pytest.fixture
def cluster_with_replicas() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3, replicas_per_master=1) as cluster:
        yield cluster


async def test_cluster_master_failover_under_load(
    cluster_with_replicas: RedisCluster,
    serve: Serve,
    figures: Record,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = cluster_with_replicas
    # fail over the master that holds the probe's counter
    client = cluster.client()
    probe_tag = "{" + identity("rel", (("k", "probe"),)) + "}"
    probe_port = client.get_node_from_key(probe_tag).port  # type: ignore[no-untyped-call]
    client.close()
    index = next(i for i, m in enumerate(cluster.masters) if m.port == probe_port)

    backend = RedisBackend(RedisOptions(url=cluster.url, timeout_s=TIMEOUT_S))
    service = await serve(RULES, backend=backend, health_interval_s=0.2)
    with caplog.at_level(logging.INFO):
        outcome = await under_load(
            service,
            Fault(
                inject=lambda: cluster.failover(index),
                heal=lambda: None,
                connections=lambda: clients_of(cluster.nodes),
                fault_s=0.0,
            ),
        )
    figures(fault="cluster CLUSTER FAILOVER of the probe's master", **outcome.figures())
    check(outcome, "error", "either", connections_bound=4 * len(cluster.nodes))
    no_tracebacks(caplog)
