"""The examples (examples/*/app.py with their ratelimitd.yaml) against a real ratelimitd.

The server's clock is a fake one set to a known time, so windows and refills are exact: at
T = 1_700_000_160 an epoch-aligned 15-minute window has 840 s left and a minute window 60 s
(the login example's windows open at the first attempt instead).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from ratelimitd_client import AsyncRateLimitClient

from ratelimitd.clock import FakeClock
from tests.client.conftest import TOKEN, example_rules, http, load_example, target
from tests.integration.conftest import StartServer

T = 1_700_000_160.0
assert T % 900 == 60 and T % 60 == 0

MakeAsync = Callable[..., AsyncRateLimitClient]


async def example(
    name: str, start_server: StartServer, async_client: MakeAsync, **app_options: Any
) -> tuple[Any, FakeClock, AsyncRateLimitClient]:
    clock = FakeClock(T)
    server = await start_server(example_rules(name), clock=clock, admin_token=TOKEN)
    client = async_client(target(server), admin_token=TOKEN)
    return load_example(name).create_app(client, **app_options), clock, client


def login(browser: httpx.AsyncClient, password: str) -> Any:
    return browser.post("/login", json={"username": "alice", "password": password})


RIGHT, WRONG = "correct horse battery staple", "hunter2"


# 1. Login ----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 300, 899])
async def test_login_after_five_failures_refused_until_15_minutes_after_the_first(
    start_server: StartServer, async_client: MakeAsync, offset: int
) -> None:
    """The README's sentence: the 6th attempt, at any offset inside the window, is refused
    until exactly 15 minutes after the first attempt."""
    app, clock, _ = await example("login", start_server, async_client)
    async with http(app, peer=("198.51.100.7", 5000)) as attacker:
        failures = [await login(attacker, WRONG)]
        clock.advance(offset / 2)
        failures += [await login(attacker, WRONG) for _ in range(4)]
        clock.advance(offset - offset / 2)
        sixth = await login(attacker, RIGHT)  # even the right password: the IP is locked out
    assert [r.status_code for r in failures] == [401] * 5
    assert [r.headers["RateLimit-Remaining"] for r in failures] == ["4", "3", "2", "1", "0"]
    assert all(r.headers["RateLimit-Limit"] == "5" for r in failures)
    assert failures[0].headers["RateLimit-Reset"] == "900"  # from the first attempt
    left = str(900 - offset)
    assert sixth.status_code == 429
    assert sixth.headers["Retry-After"] == left
    assert sixth.headers["RateLimit-Reset"] == left
    assert sixth.headers["RateLimit-Remaining"] == "0"
    assert sixth.json() == {"error": "rate_limited", "retry_after": 900 - offset}

    async with http(app, peer=("198.51.100.8", 5000)) as someone_else:
        assert (await login(someone_else, RIGHT)).status_code == 200

    clock.advance(900 - offset - 1)  # one second before 15 minutes after the first
    async with http(app, peer=("198.51.100.7", 5000)) as attacker:
        still = await login(attacker, RIGHT)
        assert still.status_code == 429 and still.headers["Retry-After"] == "1"
        clock.advance(1)  # exactly 15 minutes after the first attempt
        assert (await login(attacker, RIGHT)).status_code == 200


async def test_login_a_success_resets_the_count(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    app, _, client = await example("login", start_server, async_client)
    async with http(app, peer=("198.51.100.9", 5000)) as user:
        typos = [(await login(user, WRONG)).status_code for _ in range(4)]
        success = await login(user, RIGHT)
        [state] = await client.peek(
            "login_example", [[("route", "login"), ("remote_address", "198.51.100.9")]]
        )
        later = [(await login(user, WRONG)).status_code for _ in range(5)]
        locked = await login(user, WRONG)
    assert typos == [401] * 4
    assert success.status_code == 200 and success.json() == {"user": "alice"}
    assert state.remaining == 5  # cleared, the successful attempt included
    assert later == [401] * 5
    assert locked.status_code == 429


async def test_forgot_password_three_per_minute_per_ip(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    app, clock, _ = await example("login", start_server, async_client)
    async with http(app, peer=("198.51.100.10", 5000)) as user:
        asked = [
            await user.post("/forgot-password", json={"email": "a@example.com"}) for _ in range(4)
        ]
        login_still_open = await login(user, RIGHT)
        clock.advance(60)
        next_minute = await user.post("/forgot-password", json={"email": "a@example.com"})
    assert [r.status_code for r in asked] == [202, 202, 202, 429]
    assert asked[0].headers["RateLimit-Limit"] == "3"
    assert asked[3].headers["Retry-After"] == "60"
    assert asked[3].json() == {"error": "rate_limited", "retry_after": 60}
    assert login_still_open.status_code == 200
    assert next_minute.status_code == 202


async def test_login_behind_a_trusted_proxy_counts_per_client(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    app, _, _ = await example("login", start_server, async_client, trusted_proxies=["10.0.0.0/8"])
    async with http(app, peer=("10.0.0.2", 5000)) as proxy:
        one = [
            (await proxy.post("/login", json={"username": "alice", "password": WRONG},
                              headers={"X-Forwarded-For": "198.51.100.20"})).status_code
            for _ in range(6)
        ]  # fmt: skip
        other = await proxy.post(
            "/login",
            json={"username": "alice", "password": RIGHT},
            headers={"X-Forwarded-For": "198.51.100.21"},
        )
    assert one == [401] * 5 + [429]
    assert other.status_code == 200


# 2. API key tiers --------------------------------------------------------------------------


async def test_api_tiers_a_free_key_bursts_100_then_refills_at_10_per_second(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    app, clock, _ = await example("api_tiers", start_server, async_client)
    key = {"X-API-Key": "free-demo-key"}
    async with http(app) as caller:
        burst = [await caller.get("/v1/quotes/acme", headers=key) for _ in range(100)]
        over = await caller.get("/v1/quotes/acme", headers=key)
        clock.advance(1)  # Retry-After: 10 tokens by then
        refilled = [await caller.get("/v1/quotes/acme", headers=key) for _ in range(10)]
        again = await caller.get("/v1/quotes/acme", headers=key)
    assert all(r.status_code == 200 for r in burst)
    assert burst[0].json() == {"symbol": "ACME", "price": "42.00", "tier": "free"}
    assert burst[0].headers["RateLimit-Limit"] == "10"
    assert burst[0].headers["RateLimit-Remaining"] == "99"
    assert burst[-1].headers["RateLimit-Remaining"] == "0"
    assert burst[-1].headers["RateLimit-Reset"] == "10"  # 100 tokens at 10/s
    assert over.status_code == 429
    assert over.headers["Retry-After"] == "1"  # 0.1 s, rounded up
    assert over.json() == {"error": "rate_limited", "retry_after": 1}
    assert [r.status_code for r in refilled] == [200] * 10 and again.status_code == 429


@pytest.mark.parametrize(
    ("key", "rate", "burst"),
    [
        ("free-demo-key", 10, 100),
        ("premium-demo-key", 100, 1000),
        ("enterprise-demo-key", 1000, 10000),
    ],
)
async def test_api_tiers_the_tier_comes_from_the_key(
    start_server: StartServer, async_client: MakeAsync, key: str, rate: int, burst: int
) -> None:
    app, _, _ = await example("api_tiers", start_server, async_client)
    async with http(app) as caller:
        response = await caller.get("/v1/quotes/acme", headers={"X-API-Key": key})
    assert response.status_code == 200
    assert response.headers["RateLimit-Limit"] == str(rate)
    assert response.headers["RateLimit-Remaining"] == str(burst - 1)


async def test_api_tiers_each_key_has_its_own_bucket_and_bad_keys_are_limited_per_ip(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    keys = {"free-a": "free", "free-b": "free"}
    app, _, client = await example("api_tiers", start_server, async_client, api_keys=keys)
    async with http(app) as caller:
        for _ in range(100):
            await caller.get("/v1/quotes/x", headers={"X-API-Key": "free-a"})
        exhausted = await caller.get("/v1/quotes/x", headers={"X-API-Key": "free-a"})
        fresh = await caller.get("/v1/quotes/x", headers={"X-API-Key": "free-b"})
        bad = [await caller.get("/v1/quotes/x", headers={"X-API-Key": "guess"}) for _ in range(31)]
        health = await caller.get("/healthz")
    assert exhausted.status_code == 429 and fresh.status_code == 200
    assert [r.status_code for r in bad] == [401] * 30 + [429]
    assert bad[0].headers["RateLimit-Limit"] == "30"
    assert health.status_code == 200 and "RateLimit-Limit" not in health.headers
    # the key itself was never sent: only its hash has a counter
    digest = hashlib.sha256(b"free-a").hexdigest()[:32]
    hashed = await client.peek("api_tiers", [[("tier", "free"), ("api_key", digest)]])
    raw = await client.peek("api_tiers", [[("tier", "free"), ("api_key", "free-a")]])
    assert {state.name: state.remaining for state in hashed} == {
        "free": 0,
        "free_monthly": 10_000 - 100,  # the calendar month's quota counts every admitted call
    }
    assert {state.name: state.remaining for state in raw} == {"free": 100, "free_monthly": 10_000}


# 3. Endpoint classes -----------------------------------------------------------------------


async def test_endpoint_classes_have_separate_budgets_per_client(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    app, _, _ = await example("endpoint_classes", start_server, async_client)
    async with http(app, peer=("198.51.100.30", 5000)) as one:
        runs = [(await one.post("/jobs/build/run")).status_code for _ in range(6)]
        read_after_runs = await one.get("/jobs/build")
        tokens = [(await one.post("/auth/token")).status_code for _ in range(11)]
        reads = [(await one.get("/jobs/build")).status_code for _ in range(100)]
        denied_read = await one.get("/jobs/build")
    async with http(app, peer=("198.51.100.31", 5000)) as two:
        other_client = await two.post("/jobs/build/run")
    assert runs == [200] * 5 + [429]
    assert read_after_runs.status_code == 200
    assert read_after_runs.headers["RateLimit-Limit"] == "100"
    assert tokens == [200] * 10 + [429]
    assert reads == [200] * 99 + [429]  # one read was spent above
    assert denied_read.headers["Retry-After"] == "60"
    assert other_client.status_code == 200
    assert other_client.headers["RateLimit-Limit"] == "5"
    assert other_client.headers["RateLimit-Remaining"] == "4"


async def test_endpoint_classes_a_minute_from_the_first_call_of_the_class(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    """The README's sentence: a class's calls count in a minute that starts at the client's
    first call of that class; refused until that minute is over."""
    app, clock, _ = await example("endpoint_classes", start_server, async_client)
    clock.advance(20)  # not on a minute boundary
    async with http(app, peer=("198.51.100.32", 5000)) as client:
        runs = [(await client.post("/jobs/build/run")).status_code for _ in range(5)]
        clock.advance(30)
        sixth = await client.post("/jobs/build/run")
        clock.advance(29)
        still = await client.post("/jobs/build/run")
        clock.advance(1)  # a minute after the first run
        again = await client.post("/jobs/build/run")
    assert runs == [200] * 5
    assert sixth.status_code == 429 and sixth.headers["Retry-After"] == "30"
    assert still.status_code == 429 and still.headers["Retry-After"] == "1"
    assert again.status_code == 200 and again.headers["RateLimit-Remaining"] == "4"


# 4. LLM token budgets ----------------------------------------------------------------------


def gated_model(streams: int) -> tuple[Callable[..., Any], asyncio.Event]:
    """The example's fake model, holding every answer until `streams` of them have started:
    they are all in flight, past their probe, before any is charged."""
    started: list[None] = []
    everyone = asyncio.Event()

    async def model(prompt: str, max_tokens: int) -> Any:
        started.append(None)
        if len(started) >= streams:
            everyone.set()
        await everyone.wait()
        for index in range(max_tokens):
            yield f"token{index} "

    return model, everyone


def complete(browser: httpx.AsyncClient, tokens: int, key: str = "demo-key-1") -> Any:
    return browser.post(
        "/v1/completions",
        json={"prompt": "hi", "max_tokens": tokens},
        headers={"X-API-Key": key},
    )


async def test_llm_answers_are_charged_in_full_when_they_end_and_the_debt_is_waited_out(
    start_server: StartServer, async_client: MakeAsync
) -> None:
    """The README's sentence: answered while any budget is left; every answer charged in
    full when it ends; then refused until the windows have paid the debt off."""
    model, _ = gated_model(3)
    app, clock, client = await example("llm_budget", start_server, async_client, model=model)
    digest = hashlib.sha256(b"demo-key-1").hexdigest()[:32]
    async with http(app) as browser:
        answers = await asyncio.gather(*(complete(browser, 4000) for _ in range(3)))
        assert [answer.status_code for answer in answers] == [200] * 3
        assert all(answer.text.count("token") == 4000 for answer in answers)
        states = {s.name: s for s in await client.peek("llm_budget", [[("api_key", digest)]])}
        assert states["tokens_per_minute"].remaining == 0  # 12,000 charged: 2,000 owed
        assert states["tokens_per_day"].remaining == 200_000 - 12_000

        refused = await complete(browser, 10)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "60"  # the minute's end pays the debt off
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert refused.json() == {"error": "rate_limited", "retry_after": 60}

        clock.advance(60)  # the next minute starts with the 2,000 owed
        again = await complete(browser, 10)
        assert again.status_code == 200
        assert again.headers["RateLimit-Remaining"] == "8000"
        assert again.headers["RateLimit-Limit"] == "10000"

        other_key = await complete(browser, 10, key="demo-key-2")
        unknown = await complete(browser, 10, key="guess")
    assert other_key.status_code == 200 and unknown.status_code == 401
