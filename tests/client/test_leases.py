"""The client's acquire, release and lease(...), and the Starlette middleware's concurrency
option, against a real ratelimitd (issue 21, item 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from ratelimitd_client import AsyncRateLimitClient, InvalidRequest, Lease, RateLimitClient
from ratelimitd_client.starlette import RateLimitMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from ratelimitd.clock import FakeClock
from tests.client.conftest import http, target
from tests.integration.conftest import StartServer

RULES = """
domain: app
descriptors:
  - key: tenant
    rate_limit: {algorithm: concurrency, max_in_flight: 2, lease_ttl_s: 20}
  - key: client
    rate_limits:
      - {algorithm: concurrency, max_in_flight: 1, lease_ttl_s: 60}
      - {unit: minute, requests_per_unit: 100}
"""


async def service(start_server: StartServer) -> Any:
    return await start_server(RULES, clock=FakeClock(1_700_000_100.0))


async def test_async_acquire_release_and_the_context_manager(
    start_server: StartServer, async_client: Callable[..., AsyncRateLimitClient]
) -> None:
    client = async_client(target(await service(start_server)))
    first = await client.acquire("app", [{"tenant": "a"}])
    assert isinstance(first, Lease) and first.allowed and first.id and first.ttl == 20
    async with client.lease("app", [{"tenant": "a"}]) as second:
        assert second.allowed
        third = await client.acquire("app", [{"tenant": "a"}])
        assert not third.allowed and third.id == "" and third.retry_after == 20
    assert (await client.acquire("app", [{"tenant": "a"}])).allowed  # `second` was released
    assert await client.release(first) is True
    assert await client.release(first.id) is False  # once
    with pytest.raises(RuntimeError):
        async with client.lease("app", [{"tenant": "b"}]) as failing:
            assert failing.allowed
            raise RuntimeError("the work failed")
    held = [await client.acquire("app", [{"tenant": "b"}]) for _ in range(2)]
    assert all(lease.allowed for lease in held)  # the failed block's lease was released too
    with pytest.raises(InvalidRequest, match="holds nothing to release"):
        await client.release(third)
    with pytest.raises(InvalidRequest, match="not a lease id"):
        await client.release("forged.W10x")


async def test_sync_acquire_release_and_the_context_manager(
    start_server: StartServer, sync_client: Callable[..., RateLimitClient]
) -> None:
    client = sync_client(target(await service(start_server)))

    def scenario() -> list[bool]:
        seen = []
        with (
            client.lease("app", [{"tenant": "s"}]) as one,
            client.lease("app", [{"tenant": "s"}]) as two,
        ):
            seen += [one.allowed, two.allowed, client.acquire("app", [{"tenant": "s"}]).allowed]
        lease = client.acquire("app", [{"tenant": "s"}])
        seen += [lease.allowed, client.release(lease), client.release(lease)]
        return seen

    assert await asyncio.to_thread(scenario) == [True, True, False, True, True, False]


def streaming_app(
    client: AsyncRateLimitClient, started: asyncio.Event, go_on: asyncio.Event
) -> Any:
    async def body() -> AsyncIterator[str]:
        yield "first "
        started.set()
        await go_on.wait()
        yield "last"

    async def stream(request: Any) -> Any:
        return StreamingResponse(body())

    async def quick(request: Any) -> Any:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/stream", stream), Route("/quick", quick)])
    return RateLimitMiddleware(
        app,
        client=client,
        domain="app",
        descriptors=lambda request: [[("client", request.query_params["who"])]],
        concurrency=True,
    )


async def test_the_middleware_holds_a_lease_for_the_whole_streaming_response(
    start_server: StartServer, async_client: Callable[..., AsyncRateLimitClient]
) -> None:
    client = async_client(target(await service(start_server)))
    started, go_on = asyncio.Event(), asyncio.Event()
    app = streaming_app(client, started, go_on)
    async with http(app) as browser:
        streaming = asyncio.create_task(browser.get("/stream", params={"who": "c1"}))
        await asyncio.wait_for(started.wait(), 10)
        refused = await browser.get("/quick", params={"who": "c1"})  # one in flight at most
        other = await browser.get("/quick", params={"who": "c2"})
        go_on.set()
        finished = await streaming
        after = await browser.get("/quick", params={"who": "c1"})
    assert refused.status_code == 429
    assert refused.json() == {"error": "too_many_in_flight", "retry_after": 1}
    assert refused.headers["Retry-After"] == "1"
    assert other.status_code == 200
    assert finished.status_code == 200 and finished.text == "first last"
    assert after.status_code == 200  # released when the stream ended
    assert "RateLimit-Limit" in after.headers  # the rate limit was checked as well


async def test_a_client_that_goes_away_mid_stream_frees_its_place(
    start_server: StartServer, async_client: Callable[..., AsyncRateLimitClient]
) -> None:
    client = async_client(target(await service(start_server)))
    started, never = asyncio.Event(), asyncio.Event()
    app = streaming_app(client, started, never)
    async with http(app) as browser:
        streaming = asyncio.create_task(browser.get("/stream", params={"who": "gone"}))
        await asyncio.wait_for(started.wait(), 10)
        assert (await browser.get("/quick", params={"who": "gone"})).status_code == 429
        streaming.cancel()  # the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await streaming
        for _ in range(100):  # the release is on its way
            if (await browser.get("/quick", params={"who": "gone"})).status_code == 200:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the lease of the cancelled stream was never released")
