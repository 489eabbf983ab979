"""Both clients against a real ratelimitd: checks, hits, probes, Reset, Peek, and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from ratelimitd_client import (
    AsyncRateLimitClient,
    Decision,
    InvalidRequest,
    RateLimitClient,
    Unauthenticated,
)

from tests.client.conftest import RULES, TOKEN, target
from tests.integration.conftest import StartServer
from tests.servers.service import ServiceProcess

MakeAsync = Callable[..., AsyncRateLimitClient]
MakeSync = Callable[..., RateLimitClient]


@pytest.fixture
async def server(start_server: StartServer) -> Any:
    return await start_server(RULES, admin_token=TOKEN)


async def test_async_check_counts_down_then_denies_with_retry_after(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server))
    decisions = [await client.check("web", [{"remote_address": "1.1.1.1"}]) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert all(d.limit == 3 and d.failure is None for d in decisions)
    denied = decisions[-1]
    assert 1 <= denied.retry_after <= 60
    assert denied.headers()["Retry-After"] == str(denied.retry_after)
    assert denied.headers()["RateLimit-Reset"] == str(denied.retry_after)
    assert denied.statuses[0].code == "OVER_LIMIT"
    assert denied.statuses[0].limit is not None and denied.statuses[0].limit.name == "per_ip"
    other = await client.check("web", [{"remote_address": "2.2.2.2"}])
    assert other.allowed and other.remaining == 2


async def test_hits_and_probes(server: Any, async_client: MakeAsync) -> None:
    client = async_client(target(server))
    descriptor = [{"api_key": "k1"}]
    probe = await client.check("web", descriptor, hits=0)
    assert probe.allowed and probe.remaining == 5
    assert (await client.check("web", descriptor, hits=3)).remaining == 2
    assert (await client.check("web", descriptor, hits=0)).remaining == 2  # nothing consumed
    too_many = await client.check("web", descriptor, hits=3)
    assert not too_many.allowed and too_many.remaining == 2  # a denied hit costs nothing
    assert (await client.check("web", descriptor, hits=2)).remaining == 0
    empty_probe = await client.check("web", descriptor, hits=0)
    assert not empty_probe.allowed and empty_probe.retry_after >= 1


async def test_one_status_per_descriptor_in_order_and_the_tightest_in_the_headers(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server))
    decision = await client.check(
        "web",
        [
            {"plan": "large"},
            {"plan": "unlimited"},
            [("nothing", "matches")],
            {"plan": "small"},
        ],
    )
    assert decision.allowed
    assert [s.limit.name if s.limit else None for s in decision.statuses] == [
        "large",
        None,
        None,
        "small",
    ]
    assert decision.statuses[1].remaining is None  # unlimited: no current_limit
    assert (decision.limit, decision.remaining) == (1, 0)
    unknown_domain = await client.check("nobody-configured-this", [{"a": "b"}])
    assert unknown_domain.allowed and unknown_domain.headers() == {}


async def test_reset_and_peek_with_the_admin_token(server: Any, async_client: MakeAsync) -> None:
    client = async_client(target(server), admin_token=TOKEN)
    descriptor = [[("remote_address", "3.3.3.3")]]
    for _ in range(3):
        await client.check("web", descriptor)
    [state] = await client.peek("web", descriptor)
    assert (state.name, state.remaining, state.over_limit, state.algorithm) == (
        "per_ip",
        0,
        True,
        "fixed_window",
    )
    assert (state.requests_per_unit, state.unit, state.unit_multiplier) == (3, "minute", 1)
    assert await client.reset("web", descriptor) == 1
    assert (await client.peek("web", descriptor))[0].remaining == 3
    assert (await client.check("web", descriptor)).remaining == 2


async def test_admin_calls_need_the_right_token(server: Any, async_client: MakeAsync) -> None:
    descriptor = [{"remote_address": "4.4.4.4"}]
    with pytest.raises(Unauthenticated, match="token"):  # refused before anything is sent
        await async_client(target(server)).reset("web", descriptor)
    wrong = async_client(target(server), admin_token="not-the-token")
    with pytest.raises(Unauthenticated, match="UNAUTHENTICATED"):
        await wrong.peek("web", descriptor)
    assert await wrong.reset("web", descriptor, token=TOKEN) == 0  # a per-call token wins


async def test_a_request_ratelimitd_refuses_raises_instead_of_failing_open(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server), failure_mode="allow")
    with pytest.raises(InvalidRequest, match="INVALID_ARGUMENT"):
        await client.check("web", [{"remote_address": "x" * 5000}])


async def test_the_sync_client_does_the_same(server: Any, sync_client: MakeSync) -> None:
    client = sync_client(target(server), admin_token=TOKEN)

    def scenario() -> list[Decision]:
        decisions = [client.check("web", [{"remote_address": "5.5.5.5"}]) for _ in range(4)]
        assert client.peek("web", [{"remote_address": "5.5.5.5"}])[0].over_limit
        assert client.reset("web", [{"remote_address": "5.5.5.5"}]) == 1
        decisions.append(client.check("web", [{"remote_address": "5.5.5.5"}], hits=0))
        return decisions

    decisions = await asyncio.to_thread(scenario)
    assert [d.allowed for d in decisions] == [True, True, True, False, True]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 3]
    assert decisions[3].retry_after >= 1


def test_sync_and_async_clients_share_counters_through_one_service(
    service: ServiceProcess,
) -> None:
    """Several processes' clients (here a sync and an async one) see one count."""
    descriptor = [{"user": "shared-user"}]
    with RateLimitClient(service.target, timeout=5) as sync:
        first = sync.check("web", descriptor)

        async def second() -> Decision:
            async with AsyncRateLimitClient(service.target, timeout=5) as client:
                return await client.check("web", descriptor)

        after = asyncio.run(second())
        third = sync.check("web", descriptor)
    assert (first.remaining, after.remaining) == (1, 0)
    assert not third.allowed


async def test_one_client_keeps_one_channel_across_calls(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server))
    await client.check("web", [{"plan": "large"}])
    channel = client._current
    await asyncio.gather(*(client.check("web", [{"plan": "large"}]) for _ in range(10)))
    assert client._current is channel


async def test_connect_reports_whether_ratelimitd_is_reachable(
    server: Any, async_client: MakeAsync, sync_client: MakeSync, closed_port: int
) -> None:
    assert await async_client(target(server)).connect(timeout=5)
    assert await asyncio.to_thread(sync_client(target(server)).connect, 5)
    nowhere = f"127.0.0.1:{closed_port}"
    assert not await async_client(nowhere).connect(timeout=0.2)
    assert not await asyncio.to_thread(sync_client(nowhere).connect, 0.2)


async def test_both_clients_make_their_channel_on_first_use(
    server: Any, async_client: MakeAsync, sync_client: MakeSync
) -> None:
    """So that a client can be made at import time, before the event loop or the fork."""
    asynchronous, synchronous = async_client(target(server)), sync_client(target(server))
    assert asynchronous._current is None and synchronous._current is None
    await asynchronous.check("web", [{"plan": "large"}])
    await asyncio.to_thread(synchronous.check, "web", [{"plan": "large"}])
    assert asynchronous._current is not None and synchronous._current is not None
