"""The Redis backend's pure parts: URLs, script text, replies, the over-limit cache."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ratelimitd.backends.base import CounterRequest, CounterResult
from ratelimitd.backends.redis.backend import (
    HIT_SCRIPT,
    OverLimitCache,
    backend_error,
    parse_reply,
    redis_failures_as_backend_errors,
    script_args,
)
from ratelimitd.backends.redis.client import RedisOptions, _hosts, describe, make_client
from ratelimitd.errors import BackendError, ConfigError
from ratelimitd.model import Algorithm, Charge, Limit, LimitResult, Unit


def test_multi_host_urls_are_parsed() -> None:
    hosts, path, auth = _hosts(
        "redis+sentinel://u:p%40ss@h1:26379,h2:26380/mymaster", need_path=True
    )
    assert hosts == [("h1", 26379), ("h2", 26380)]
    assert path == "mymaster"
    assert auth == {"username": "u", "password": "p@ss"}
    hosts, path, auth = _hosts("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", need_path=False)
    assert hosts == [("10.0.0.1", 7000), ("10.0.0.2", 7001)] and path == "" and auth == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://h:1", "RATELIMITD_REDIS_URL: unsupported scheme in 'memcached://h:1'"),
        (
            "redis+sentinel://h:1",
            "RATELIMITD_REDIS_URL: 'redis+sentinel://h:1' names no Sentinel master",
        ),
        ("redis+cluster://h:x", "RATELIMITD_REDIS_URL: expected host:port, got 'h:x'"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_client(RedisOptions(url=url))
    assert caught.value.errors[0].startswith(message)


async def test_client_kinds() -> None:
    assert isinstance(make_client(RedisOptions(url="redis://127.0.0.1:1")), Redis)
    assert isinstance(make_client(RedisOptions(url="redis+cluster://127.0.0.1:1")), RedisCluster)


def test_passwords_are_hidden_in_descriptions() -> None:
    assert describe("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert describe("redis://h:6379") == "redis://h:6379"


def test_the_script_holds_every_algorithm() -> None:
    for algorithm in Algorithm:
        assert f"local function {algorithm.value}(" in HIT_SCRIPT


def test_script_args_and_reply() -> None:
    limits = (
        Limit(10, Unit.SECOND, algorithm=Algorithm.TOKEN_BUCKET, burst=20),
        Limit(1000, Unit.DAY, charge=Charge.ALWAYS),
    )
    both = CounterRequest("p:{d|k=v}", limits, 2)
    one = CounterRequest("p:{d|k=w}", limits[1:], 1)
    assert script_args([both, one], "") == [
        "",
        2,
        2,
        2,
        1,  # binding: its denial denies the call
        "token_bucket",
        10,
        1,
        20,
        0,  # charge: if_fits
        "fixed_window",
        1000,
        86400,
        1000,
        1,  # charge: always
        1,
        1,
        1,
        "fixed_window",
        1000,
        86400,
        1000,
        1,
    ]
    results = parse_reply([0, 1, 18, 200, 0, 0, 3_600_000, 1, 1, 999, 5000], [both, one])
    assert results == [
        CounterResult(False, (LimitResult(True, 18, 0.2), LimitResult(False, 0, 3600.0))),
        CounterResult(True, (LimitResult(True, 999, 5.0),)),
    ]


def denial(reset_after: float) -> CounterResult:
    return CounterResult(False, (LimitResult(False, 0, reset_after),))


def test_over_limit_cache_serves_until_the_denial_lapses() -> None:
    cache = OverLimitCache()
    request = CounterRequest("p:{a}", (Limit(1, Unit.MINUTE),), 1)
    cache.put(request, denial(30.0), now=100.0)
    cached = cache.get(request, now=110.0)
    assert cached is not None and not cached.allowed
    assert cached.results[0].reset_after == pytest.approx(20.0)
    assert cache.get(request, now=130.0) is None


def test_over_limit_cache_ignores_cheaper_requests_and_allowed_results() -> None:
    cache = OverLimitCache()
    costly = CounterRequest("p:{a}", (Limit(5, Unit.MINUTE),), 3)
    cache.put(costly, denial(30.0), now=0.0)
    assert cache.get(CounterRequest("p:{a}", costly.limits, 1), now=1.0) is None
    assert cache.get(CounterRequest("p:{a}", costly.limits, 3), now=1.0) is not None
    allowed = CounterRequest("p:{b}", costly.limits, 1)
    cache.put(allowed, CounterResult(True, (LimitResult(True, 4, 60.0),)), now=0.0)
    assert cache.get(allowed, now=1.0) is None


def test_over_limit_cache_is_bounded() -> None:
    cache = OverLimitCache(max_entries=10)
    limits = (Limit(1, Unit.MINUTE),)
    for n in range(100):
        cache.put(CounterRequest(f"p:{{{n}}}", limits, 1), denial(60.0), now=0.0)
    assert len(cache._entries) == 10
    assert cache.get(CounterRequest("p:{99}", limits, 1), now=1.0) is not None
    assert cache.get(CounterRequest("p:{0}", limits, 1), now=1.0) is None


def _redis_py_exception_classes() -> list[type[BaseException]]:
    """Every exception class redis-py defines, Sentinel's included."""
    import inspect

    import redis.asyncio.sentinel
    import redis.exceptions
    import redis.sentinel

    found = {
        value
        for module in (redis.exceptions, redis.sentinel, redis.asyncio.sentinel)
        for _, value in inspect.getmembers(module, inspect.isclass)
        if issubclass(value, Exception)
    }
    return sorted(found, key=lambda kind: f"{kind.__module__}.{kind.__qualname__}")


@pytest.mark.parametrize("kind", _redis_py_exception_classes(), ids=lambda kind: kind.__name__)
def test_every_redis_py_exception_becomes_a_backend_error(kind: type[Exception]) -> None:
    """One boundary translates them all, the Cluster family (not a `RedisError`) included."""
    try:
        error = kind("boom")
    except (TypeError, ValueError):  # a few take other arguments (MOVED/ASK: "slot host:port")
        error = kind("1 127.0.0.1:7000")
    with pytest.raises(BackendError) as caught, redis_failures_as_backend_errors():
        raise error
    assert caught.value.__cause__ is error
    assert caught.value.kind in ("timeout", "script", "connection")


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (SlotNotCoveredError('Slot "1" not covered'), "connection", "Redis failed: SlotNotCoveredError"),
        (RedisTimeoutError("slow"), "timeout", "Redis timed out: slow"),
        (TimeoutError("slow"), "timeout", "Redis timed out: slow"),
        (ResponseError("ERR bad script"), "script", "Redis failed: ERR bad script"),
        (RedisConnectionError("cannot connect: connection refused"), "connection", "Redis unreachable: cannot connect: connection refused"),
        (ConnectionRefusedError(111, "refused"), "connection", "Redis failed: ConnectionRefusedError"),
    ],
)  # fmt: skip
def test_backend_errors_say_what_failed(error: Exception, kind: str, message: str) -> None:
    translated = backend_error(error)
    assert translated.kind == kind
    assert str(translated).startswith(message)


def test_our_own_bugs_are_not_disguised_as_backend_failures() -> None:
    with pytest.raises(ZeroDivisionError), redis_failures_as_backend_errors():
        raise ZeroDivisionError
