"""What Envoy does when ratelimitd, or ratelimitd's Redis, is gone (the table in docs/envoy.md).

Two Envoys from deploy/envoy/envoy.yaml, one with `failure_mode_deny: false` (as deployed,
fail open) and one with `true` (fail closed), stay up for the whole module. Each test starts
its own ratelimitd on the one gRPC port both Envoys point at, so Envoy is never restarted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from ratelimitd.settings import Settings
from tests.e2e.harness import (
    CONFIG_DIR,
    EnvoyProcess,
    Reply,
    Upstream,
    assert_limited,
    assert_passed,
    demo_limit,
    get,
    new_client_ip,
    service_env,
    wait_for_window_start,
)
from tests.servers.redis import RedisServer, free_port
from tests.servers.service import ServiceProcess

ENVOY_ERROR_STATUS = 500  # the ratelimit filter's default status_on_error


@pytest.fixture(scope="module")
def rls_port() -> int:
    """The gRPC port every ratelimitd of this module listens on."""
    return free_port()


@pytest.fixture(scope="module")
def fail_open(rls_port: int, upstream: Upstream) -> Iterator[EnvoyProcess]:
    with EnvoyProcess(
        ratelimitd_port=rls_port, upstream_port=upstream.port, failure_mode_deny=False
    ) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def fail_closed(rls_port: int, upstream: Upstream) -> Iterator[EnvoyProcess]:
    with EnvoyProcess(
        ratelimitd_port=rls_port, upstream_port=upstream.port, failure_mode_deny=True
    ) as proxy:
        yield proxy


def ratelimitd_on(port: int, **settings: str) -> ServiceProcess:
    """A ratelimitd (not started) on `port`, where both Envoys expect it."""
    service = ServiceProcess(CONFIG_DIR, service_env(RATELIMITD_LOG_LEVEL="error", **settings))
    service.grpc_port = port
    return service


def warm_up(*envoys: EnvoyProcess) -> None:
    for envoy in envoys:
        envoy.warm_up()


def exhaust_per_ip_limit(envoy: EnvoyProcess) -> str:
    """Spends one new client's "/" budget; the next request from it is a 429."""
    limit = demo_limit("per_ip")["requests_per_unit"]
    wait_for_window_start(60)
    client = new_client_ip()
    for _ in range(limit):
        assert_passed(get(envoy.port, "/", client_ip=client), "/")
    assert_limited(get(envoy.port, "/", client_ip=client))
    return client


def assert_envoy_error(reply: Reply) -> None:
    """failure_mode_deny: true and ratelimitd could not answer."""
    assert reply.status == ENVOY_ERROR_STATUS, reply
    assert "x-envoy-ratelimited" not in reply.headers
    assert "upstream saw" not in reply.body


def test_ratelimitd_stopped_then_started_again(
    rls_port: int, fail_open: EnvoyProcess, fail_closed: EnvoyProcess
) -> None:
    envoys = (fail_open, fail_closed)
    with ratelimitd_on(rls_port) as service:
        warm_up(*envoys)
        limited = {envoy: exhaust_per_ip_limit(envoy) for envoy in envoys}
        service.stop()

        # Fail open: requests pass, even from a client that was over its limit.
        before = fail_open.ratelimit_counters()
        assert_passed(get(fail_open.port, "/", client_ip=limited[fail_open]), "/")
        assert_passed(get(fail_open.port, "/search", client_ip=new_client_ip()), "/search")
        after = fail_open.ratelimit_counters()
        assert after["failure_mode_allowed"] - before["failure_mode_allowed"] == 2
        # Fail closed: Envoy's error status, never the upstream.
        before = fail_closed.ratelimit_counters()
        assert_envoy_error(get(fail_closed.port, "/", client_ip=new_client_ip()))
        assert_envoy_error(get(fail_closed.port, "/", client_ip=limited[fail_closed]))
        assert fail_closed.ratelimit_counters()["error"] - before["error"] == 2

        # The same Envoys, not restarted, limit again once ratelimitd is back.
        pids = [envoy.process.pid for envoy in envoys if envoy.process is not None]
        service.start()
        warm_up(*envoys)
        for envoy in envoys:
            exhaust_per_ip_limit(envoy)
        assert [envoy.process.pid for envoy in envoys if envoy.process is not None] == pids


# What each RATELIMITD_BACKEND_FAILURE mode shows through Envoy while Redis is down:
# (status with failure_mode_deny: false, status with failure_mode_deny: true).
REDIS_DOWN = {
    "error": (200, ENVOY_ERROR_STATUS),  # ratelimitd answers UNAVAILABLE: Envoy's failure mode
    "allow": (200, 200),  # ratelimitd answers OK
    "deny": (429, 429),  # ratelimitd answers OVER_LIMIT
}


@pytest.mark.parametrize("backend_failure", list(REDIS_DOWN))
def test_redis_stopped(
    backend_failure: str,
    rls_port: int,
    redis_server: RedisServer,
    fail_open: EnvoyProcess,
    fail_closed: EnvoyProcess,
) -> None:
    service = ratelimitd_on(
        rls_port, RATELIMITD_REDIS_URL=redis_server.url, RATELIMITD_BACKEND_FAILURE=backend_failure
    )
    with service:
        warm_up(fail_open, fail_closed)
        limit = demo_limit("per_ip")["requests_per_unit"]
        counted = get(fail_open.port, "/", client_ip=new_client_ip())
        assert_passed(counted, "/")
        assert counted.ratelimit[1] == limit - 1  # Redis is counting

        redis_server.kill()
        service.wait_health(503)
        replies = {}
        for envoy in (fail_open, fail_closed):
            before = envoy.ratelimit_counters()
            replies[envoy] = get(envoy.port, "/", client_ip=new_client_ip())
            after = envoy.ratelimit_counters()
            # Which of ok / over_limit / error Envoy counted shows what ratelimitd answered.
            changed = {name for name in after if after[name] != before[name]}
            if backend_failure == "error":
                expected = {"error", "failure_mode_allowed"} if envoy is fail_open else {"error"}
            else:
                expected = {"ok"} if backend_failure == "allow" else {"over_limit"}
            assert changed == expected, (backend_failure, envoy.failure_mode_deny, before, after)

        statuses = (replies[fail_open].status, replies[fail_closed].status)
        assert statuses == REDIS_DOWN[backend_failure]
        for reply in replies.values():
            if reply.status == 200:
                assert_passed(reply, "/")
                # Nothing was counted, so there is no limit to report.
                assert "x-ratelimit-remaining" not in reply.headers
            elif reply.status == 429:
                assert_limited(reply)
            else:
                assert_envoy_error(reply)


def test_hanging_redis_answers_before_envoy_gives_up(
    rls_port: int, redis_server: RedisServer, fail_open: EnvoyProcess
) -> None:
    """Redis frozen (not refusing, just silent): ratelimitd's RATELIMITD_REDIS_TIMEOUT_MS ends
    the wait before Envoy's ratelimit timeout does, so Envoy gets ratelimitd's
    RATELIMITD_BACKEND_FAILURE answer (here deny: a 429), not its own failure mode (a 200)."""
    service = ratelimitd_on(
        rls_port, RATELIMITD_REDIS_URL=redis_server.url, RATELIMITD_BACKEND_FAILURE="deny"
    )
    assert redis_server.process is not None
    with service:
        fail_open.warm_up()
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            before = fail_open.ratelimit_counters()
            started = time.monotonic()
            reply = get(fail_open.port, "/", client_ip=new_client_ip())
            took = time.monotonic() - started
            after = fail_open.ratelimit_counters()
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
    assert_limited(reply)
    assert after["over_limit"] - before["over_limit"] == 1
    assert after["error"] == before["error"]
    assert took >= Settings().redis_timeout_ms / 1000
