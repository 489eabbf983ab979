"""Network faults between ratelimitd and Redis, injected by a TCP proxy while load runs.

Latency below and above the Redis timeout, a blackhole, connection resets and a cut link, in
each `RATELIMITD_BACKEND_FAILURE` mode: every call is answered in time as the mode says, the
service recovers by itself within 2 s, nothing leaks, no counter goes backwards (see
scenario.py for the exact checks). Redis killed and restarted and a Cluster failover are in
test_redis_restarts.py; tests/integration/test_redis_failures.py covers a killed or frozen
Redis without load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from tests.reliability.conftest import Record, Serve
from tests.reliability.harness import DECISION, LagMonitor, OpenLoad, rl_request, tally
from tests.reliability.scenario import (
    RULES,
    STALL_EXCUSE_S,
    TIMEOUT_S,
    Fault,
    check,
    under_load,
)
from tests.servers.faultproxy import FaultProxy
from tests.servers.redis import RedisServer

# name: (inject, what the calls during the fault get)
FAULTS: dict[str, tuple[Callable[[FaultProxy], None], str]] = {
    "latency-30ms": (lambda proxy: proxy.latency(30), "decisions"),
    "latency-300ms": (lambda proxy: proxy.latency(300), "failures"),
    "blackhole": (FaultProxy.blackhole, "failures"),
    "reset": (FaultProxy.reset, "failures"),
    "cut": (FaultProxy.cut, "failures"),
}
CASES = [(fault, "error") for fault in FAULTS] + [
    # the other modes on both failure paths: a timeout (blackhole), a refused connection (cut)
    (fault, mode)
    for fault in ("blackhole", "cut")
    for mode in ("allow", "deny")
]


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.host, redis_server.port) as fault_proxy:
        yield fault_proxy


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks[0].getMessage()


@pytest.mark.parametrize(("fault", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
async def test_network_fault_under_load(
    fault: str,
    mode: str,
    serve: Serve,
    proxy: FaultProxy,
    figures: Record,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inject, during = FAULTS[fault]
    backend = RedisBackend(RedisOptions(url=proxy.url, timeout_s=TIMEOUT_S))
    service = await serve(RULES, backend=backend, backend_failure=mode, health_interval_s=0.2)
    proxy.reset_peak()
    with caplog.at_level(logging.INFO):
        outcome = await under_load(
            service,
            Fault(
                inject=lambda: inject(proxy),
                heal=proxy.restore,
                connections=lambda: proxy.live,
                peak=lambda: proxy.peak,
            ),
        )
    figures(fault=fault, mode=mode, **outcome.figures(during == "decisions"))
    check(outcome, mode, during)
    no_tracebacks(caplog)


async def test_a_round_trip_below_the_timeout_decides_independent_arrivals(
    serve: Serve, proxy: FaultProxy, figures: Record
) -> None:
    """Redis answers every round trip in 40 ms, well within the 100 ms timeout: every call
    arriving on its own (200 per second, as through Envoy) must be decided. (With one batch in
    flight at a time, a call could need two round trips; now up to 16 are out at once. The
    proxy shares this process's GIL, hence the margin.)"""
    backend = RedisBackend(RedisOptions(url=proxy.url, timeout_s=TIMEOUT_S))
    service = await serve(RULES, backend=backend)
    await service.stub.ShouldRateLimit(rl_request("rel", [("k", "warm")]), timeout=5)
    proxy.latency(40)
    lag = LagMonitor().start()
    calls = await OpenLoad(
        service.stub, lambda n: ("k", rl_request("rel", [("k", f"v{n % 8}")])), rate=200
    ).run(2.0)
    await lag.stop()
    failed = [
        c
        for c in calls
        if c.outcome != DECISION and lag.stalled(c.started, c.ended) < STALL_EXCUSE_S
    ]
    figures(
        round_trip_ms=40,
        timeout_ms=100,
        calls=len(calls),
        outcomes=tally(calls),
        failed=len(failed),
    )
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:2]}"


def test_the_proxy_injects_each_fault(redis_server: RedisServer) -> None:
    """The fixture itself: each mode does what it says to a plain redis-py client."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = redis.Redis(
            host=proxy.host, port=proxy.port, socket_timeout=0.2, socket_connect_timeout=0.2,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        assert client.ping() and proxy.live == 1
        proxy.latency(400)
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.restore()
        assert client.ping()
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert proxy.dropped_bytes > 0
        proxy.restore()
        assert client.ping()
        proxy.reset()
        with pytest.raises(redis.ConnectionError, match="reset by peer"):
            client.ping()
        proxy.restore()
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.ConnectionError, match="refused"):
            client.ping()
        proxy.restore()
        assert client.ping()
        client.close()
        assert proxy.wait_live_at_most(0) == 0
