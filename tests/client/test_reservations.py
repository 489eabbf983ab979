"""The client's reserve, commit, refund and reservation(...) against a real ratelimitd."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from ratelimitd_client import AsyncRateLimitClient, InvalidRequest, RateLimitClient
from ratelimitd_client.starlette import denial_response, settle_stream
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from ratelimitd.clock import FakeClock
from tests.client.conftest import TOKEN, http, target
from tests.integration.conftest import StartServer

RULES = """
domain: llm
descriptors:
  - key: key
    rate_limit: {name: tokens, unit: minute, requests_per_unit: 1000, charge: always}
"""


async def started(start_server: StartServer) -> Any:
    return await start_server(RULES, clock=FakeClock(1_700_000_100.0), admin_token=TOKEN)


async def left(client: AsyncRateLimitClient, key: str) -> int:
    [state] = await client.peek("llm", [{"key": key}])
    return state.remaining


async def test_async_reserve_commit_refund_and_the_context_manager(
    start_server: StartServer, async_client: Callable[..., AsyncRateLimitClient]
) -> None:
    client = async_client(target(await started(start_server)), admin_token=TOKEN)
    reserved = await client.reserve("llm", [{"key": "a"}], 400, ttl=30)
    assert reserved.allowed and reserved.id and reserved.retry_after == 0
    assert await left(client, "a") == 600
    assert await client.commit(reserved, 100) == 100
    assert await client.commit(reserved.id, 100) == 100  # a retry: the same answer
    assert await left(client, "a") == 900

    async with client.reservation("llm", [{"key": "a"}], 500) as held:
        assert held.allowed and await left(client, "a") == 400
        held.commit(650)  # more than estimated: charged in full (charge: always)
    assert await left(client, "a") == 250

    with pytest.raises(RuntimeError):
        async with client.reservation("llm", [{"key": "a"}], 200) as failed:
            assert failed.allowed
            raise RuntimeError("the work failed")  # nothing committed: refunded
    assert await left(client, "a") == 250

    denied = await client.reserve("llm", [{"key": "a"}], 300)
    assert not denied.allowed and denied.retry_after == 60
    with pytest.raises(InvalidRequest, match="nothing to settle"):
        await client.commit(denied, 1)
    with pytest.raises(InvalidRequest, match="already settled"):
        await client.refund(reserved)
    with pytest.raises(InvalidRequest, match="estimate must be at least 1"):
        await client.reserve("llm", [{"key": "a"}], 0)


async def test_sync_reserve_and_the_context_manager(
    start_server: StartServer,
    sync_client: Callable[..., RateLimitClient],
    async_client: Callable[..., AsyncRateLimitClient],
) -> None:
    app = await started(start_server)
    client = sync_client(target(app))

    def scenario() -> int:
        with client.reservation("llm", [{"key": "s"}], 300) as held:
            held.commit(120)
        reserved = client.reserve("llm", [{"key": "s"}], 50)
        return client.refund(reserved)

    assert await asyncio.to_thread(scenario) == 0
    assert await left(async_client(target(app), admin_token=TOKEN), "s") == 880


async def test_settle_stream_commits_what_the_stream_sent(
    start_server: StartServer, async_client: Callable[..., AsyncRateLimitClient]
) -> None:
    """A streaming response whose cost is known at its end: a StreamingResponse of a fake
    model, through httpx in process; the reservation is settled at the tokens sent."""
    client = async_client(target(await started(start_server)), admin_token=TOKEN)

    async def tokens(count: int) -> Any:
        for index in range(count):
            yield f"token{index} "

    async def complete(request: Any) -> Any:
        count = int(request.query_params["tokens"])
        reservation = await client.reserve("llm", [{"key": "stream"}], 300)
        if not reservation.allowed:
            return denial_response(await client.check("llm", [{"key": "stream"}], 0))
        return StreamingResponse(settle_stream(client, reservation, tokens(count)))

    app = Starlette(routes=[Route("/complete", complete)])
    async with http(app) as browser:
        short = await browser.get("/complete", params={"tokens": 40})
        long = await browser.get("/complete", params={"tokens": 500})  # over the estimate
    assert short.text.count("token") == 40 and long.text.count("token") == 500
    assert await left(client, "stream") == 1000 - 540
