"""When ratelimitd is stopped, unreachable or frozen, the failure mode answers within the timeout.

The bounds are generous (1 s for a 50 ms timeout): they prove that a check does not hang,
not how fast it fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
from ratelimitd_client import (
    AsyncRateLimitClient,
    Decision,
    FailureMode,
    RateLimitClient,
    ServiceUnavailable,
)

from tests.client.conftest import RULES, TOKEN, target
from tests.integration.conftest import StartServer
from tests.servers.service import ServiceProcess

BOUND_S = 1.0  # for the default 50 ms timeout
DESCRIPTOR = [{"remote_address": "9.9.9.9"}]
Flavor = Literal["async", "sync"]


async def timed_check(
    client: AsyncRateLimitClient | RateLimitClient, **kwargs: Any
) -> tuple[Decision, float]:
    """One probe (hits=0: counts nothing) with the client's own 50 ms timeout unless given;
    the sync client in a thread."""
    started = time.monotonic()
    if isinstance(client, AsyncRateLimitClient):
        decision = await client.check("web", DESCRIPTOR, hits=0, **kwargs)
    else:
        decision = await asyncio.to_thread(client.check, "web", DESCRIPTOR, 0, **kwargs)
    return decision, time.monotonic() - started


@pytest.fixture
def make_client() -> Iterator[Callable[..., AsyncRateLimitClient | RateLimitClient]]:
    """Clients with the default 50 ms timeout, async or sync."""
    made: list[AsyncRateLimitClient | RateLimitClient] = []

    def make(
        flavor: Flavor, address: str, mode: FailureMode
    ) -> AsyncRateLimitClient | RateLimitClient:
        kind = AsyncRateLimitClient if flavor == "async" else RateLimitClient
        client = kind(address, failure_mode=mode, admin_token=TOKEN)
        assert client.options.timeout == 0.05
        made.append(client)
        return client

    yield make
    for client in made:
        if isinstance(client, RateLimitClient):
            client.close()


def assert_failure_mode(decision: Decision, mode: FailureMode, elapsed: float) -> None:
    assert elapsed < BOUND_S, f"the check took {elapsed:.3f} s"
    assert decision.failure is not None and decision.failure.mode == mode
    if mode == "allow":
        assert decision.allowed and decision.headers() == {}
    else:
        assert not decision.allowed and decision.retry_after == 1
        assert decision.headers() == {"Retry-After": "1"}


both_flavors = pytest.mark.parametrize("flavor", ["async", "sync"])
both_modes = pytest.mark.parametrize("mode", ["allow", "deny"])


@both_flavors
@both_modes
async def test_a_stopped_service(
    start_server: StartServer,
    make_client: Callable[..., Any],
    flavor: Flavor,
    mode: FailureMode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(RULES)
    client = make_client(flavor, target(server), mode)
    working, _ = await timed_check(client, timeout=5)  # connected and answered
    assert working.allowed and working.failure is None and working.limit == 3
    await server.stop(grace=0)
    caplog.set_level(logging.WARNING, logger="ratelimitd_client")
    for _ in range(3):
        decision, elapsed = await timed_check(client)
        assert_failure_mode(decision, mode, elapsed)
        assert decision.failure is not None
        assert decision.failure.reason in ("unavailable", "timeout")
    [warning] = [r for r in caplog.records if r.name == "ratelimitd_client"]
    assert f"failure_mode={mode}" in warning.getMessage()


@both_flavors
@both_modes
async def test_nothing_listening(
    make_client: Callable[..., Any], closed_port: int, flavor: Flavor, mode: FailureMode
) -> None:
    client = make_client(flavor, f"127.0.0.1:{closed_port}", mode)
    for _ in range(3):
        decision, elapsed = await timed_check(client)
        assert_failure_mode(decision, mode, elapsed)


@both_flavors
@both_modes
async def test_a_service_that_accepts_connections_and_never_answers(
    make_client: Callable[..., Any], silent_port: int, flavor: Flavor, mode: FailureMode
) -> None:
    client = make_client(flavor, f"127.0.0.1:{silent_port}", mode)
    for _ in range(2):
        decision, elapsed = await timed_check(client)
        assert_failure_mode(decision, mode, elapsed)
        assert decision.failure is not None and decision.failure.reason == "timeout"


@pytest.fixture(scope="module")
def frozen_service(service: ServiceProcess) -> Iterator[ServiceProcess]:
    yield service
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGCONT)


@both_flavors
async def test_a_frozen_service_process_then_its_recovery(
    frozen_service: ServiceProcess,
    make_client: Callable[..., Any],
    flavor: Flavor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert frozen_service.process is not None
    client = make_client(flavor, frozen_service.target, "deny")
    working, _ = await timed_check(client, timeout=5)
    assert working.allowed and working.failure is None
    caplog.set_level(logging.INFO, logger="ratelimitd_client")
    os.kill(frozen_service.process.pid, signal.SIGSTOP)
    try:
        for _ in range(2):
            decision, elapsed = await timed_check(client)
            assert_failure_mode(decision, "deny", elapsed)
            assert decision.failure is not None and decision.failure.reason == "timeout"
    finally:
        os.kill(frozen_service.process.pid, signal.SIGCONT)
    recovered, _ = await timed_check(client, timeout=5)
    assert recovered.failure is None and recovered.limit == 3
    assert "answers again" in caplog.records[-1].getMessage()


@both_flavors
async def test_admin_calls_raise_rather_than_guess(
    make_client: Callable[..., Any], closed_port: int, flavor: Flavor
) -> None:
    client = make_client(flavor, f"127.0.0.1:{closed_port}", "allow")
    with pytest.raises(ServiceUnavailable):
        if isinstance(client, AsyncRateLimitClient):
            await client.reset("web", DESCRIPTOR)
        else:
            await asyncio.to_thread(client.peek, "web", DESCRIPTOR)
