"""AsyncRateLimitClient coalesces concurrent checks into `ShouldRateLimitBatch` calls.

Most tests run against `Echo`, a real gRPC server on loopback that answers each request from
its own descriptors and counts the calls it gets by method; the last ones against a real
`ratelimitd serve`, whose /metrics count its calls.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from ratelimitd_client import AsyncRateLimitClient, Decision, FailureMode, InvalidRequest
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2 as pb
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as pb_grpc
from ratelimitd_client.starlette import RateLimitMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.client.conftest import http
from tests.helpers import until
from tests.servers.service import ServiceProcess

MakeAsync = Callable[..., AsyncRateLimitClient]
RESPONSE = rls_pb2.RateLimitResponse
FAILURES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "down": grpc.StatusCode.UNAVAILABLE}


def echo(descriptors: dict[str, str]) -> list[dict[str, str]]:
    """Descriptors that Echo answers with: `n` is the remaining count it reports; `deny`
    makes it OVER_LIMIT; `fail` one of FAILURES; `delay` seconds it waits first."""
    return [descriptors]


class Echo(rls_pb2_grpc.RateLimitServiceServicer, pb_grpc.RateLimitBatchServicer):
    """A gRPC server whose answers are in its requests (see `echo`), with or without the
    batch RPC. `calls` counts calls by method, those to a method it lacks too; `seen` holds
    the `n` of every request it received, on arrival."""

    def __init__(self, batch: bool = True, max_batch: int = 1024) -> None:
        self.max_batch = max_batch
        self.calls: collections.Counter[str] = collections.Counter()
        self.seen: list[str] = []
        self.server = grpc.aio.server(interceptors=[_Counting(self.calls)])
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, self.server)
        if batch:
            pb_grpc.add_RateLimitBatchServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def decide(self, request: rls_pb2.RateLimitRequest) -> tuple[Any, grpc.StatusCode | None]:
        entries = _entries(request)
        if "fail" in entries:
            return None, FAILURES[entries["fail"]]
        code = RESPONSE.OVER_LIMIT if "deny" in entries else RESPONSE.OK
        status = RESPONSE.DescriptorStatus(
            code=code,
            current_limit=RESPONSE.RateLimit(
                requests_per_unit=1000, unit=RESPONSE.RateLimit.MINUTE
            ),
            limit_remaining=int(entries.get("n", "0")),
        )
        return RESPONSE(overall_code=code, statuses=[status]), None

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        self.seen.append(_entries(request).get("n", ""))
        await asyncio.sleep(float(_entries(request).get("delay", 0)))
        response, failure = self.decide(request)
        if failure is not None:
            await context.abort(failure, f"echo says {failure.name}")
        return response

    async def ShouldRateLimitBatch(self, request: Any, context: Any) -> Any:
        if len(request.requests) > self.max_batch:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "too many requests")
        requests = [rls_pb2.RateLimitRequest.FromString(data) for data in request.requests]
        self.seen.extend(_entries(one).get("n", "") for one in requests)
        await asyncio.sleep(max(float(_entries(one).get("delay", 0)) for one in requests))
        results = []
        for one in requests:
            response, failure = self.decide(one)
            if failure is None:
                results.append(pb.BatchResult(response=response.SerializeToString()))
            else:
                message = f"echo says {failure.name}"
                results.append(pb.BatchResult(error_code=failure.value[0], error_message=message))
        return pb.ShouldRateLimitBatchResponse(results=results)


def _entries(request: rls_pb2.RateLimitRequest) -> dict[str, str]:
    return {e.key: e.value for d in request.descriptors for e in d.entries}


class _Counting(grpc.aio.ServerInterceptor):
    def __init__(self, calls: collections.Counter[str]) -> None:
        self.calls = calls

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return await continuation(details)


@pytest.fixture
async def start_echo() -> AsyncIterator[Callable[..., Awaitable[Echo]]]:
    started: list[Echo] = []

    async def start(**options: Any) -> Echo:
        server = Echo(**options)
        await server.server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.server.stop(grace=0)


def check(client: AsyncRateLimitClient, **descriptor: Any) -> Awaitable[Decision]:
    timeout = descriptor.pop("timeout", None)
    return client.check("echo", echo(descriptor), timeout=timeout)


async def test_concurrent_checks_share_few_calls_and_each_gets_its_own_answer(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target)
    wanted = {str(n): {"n": str(n), **({"deny": "yes"} if n % 3 == 0 else {})} for n in range(300)}
    decisions = await asyncio.gather(*(check(client, **d) for d in wanted.values()))
    assert [d.remaining for d in decisions] == list(range(300))
    assert [d.allowed for d in decisions] == [n % 3 != 0 for n in range(300)]
    assert all(d.failure is None and d.limit == 1000 for d in decisions)
    assert sorted(server.seen, key=int) == list(wanted)  # each sent once
    assert server.calls["ShouldRateLimitBatch"] >= 1
    assert sum(server.calls.values()) <= 10  # 1 alone, then at most 256 a batch: 3 here


async def test_a_lone_check_is_sent_at_once_as_a_single_call(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target)
    lone = asyncio.create_task(check(client, n="1", delay="0.3"))
    await until(lambda: server.seen == ["1"])  # decided while the caller still waits
    assert not lone.done()
    assert (await lone).remaining == 1
    assert (await check(client, n="2")).remaining == 2
    assert server.calls == {"ShouldRateLimit": 2}


async def test_a_refused_item_raises_for_its_caller_only(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target, failure_mode="allow")
    checks = [check(client, n=str(n), **({"fail": "invalid"} if n == 5 else {})) for n in range(20)]
    outcomes = await asyncio.gather(*checks, return_exceptions=True)
    refused = outcomes.pop(5)
    assert isinstance(refused, InvalidRequest)
    assert str(refused) == "INVALID_ARGUMENT: echo says INVALID_ARGUMENT"
    assert [d.remaining for d in outcomes if isinstance(d, Decision)] == [
        n for n in range(20) if n != 5
    ]
    assert server.calls["ShouldRateLimitBatch"] == 1


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_an_unavailable_item_gets_the_failure_mode(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync, mode: FailureMode
) -> None:
    server = await start_echo()
    client = async_client(server.target, failure_mode=mode)
    checks = [check(client, n=str(n), **({"fail": "down"} if n == 5 else {})) for n in range(20)]
    decisions = await asyncio.gather(*checks)
    failed = decisions.pop(5)
    assert failed.failure is not None and failed.failure.reason == "unavailable"
    assert failed.allowed == (mode == "allow")
    assert all(d.failure is None and d.allowed for d in decisions)
    assert server.calls["ShouldRateLimitBatch"] == 1


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_a_server_that_is_down_gets_the_failure_mode_for_every_check(
    async_client: MakeAsync, closed_port: int, mode: FailureMode, caplog: pytest.LogCaptureFixture
) -> None:
    client = async_client(f"127.0.0.1:{closed_port}", failure_mode=mode)
    caplog.set_level(logging.WARNING, logger="ratelimitd_client")
    for _ in range(2):
        decisions = await asyncio.gather(*(check(client, n=str(n)) for n in range(50)))
        assert all(d.failure is not None and d.failure.mode == mode for d in decisions)
        assert all(d.allowed == (mode == "allow") for d in decisions)
    [warning] = [r for r in caplog.records if r.name == "ratelimitd_client"]  # the first one
    assert f"failure_mode={mode}" in warning.getMessage()


async def test_a_check_whose_timeout_passes_in_the_queue_is_not_sent(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target, timeout=5)
    first = asyncio.create_task(check(client, n="1", delay="0.5"))
    await until(lambda: server.seen == ["1"])
    short = await check(client, n="2", timeout=0.05)  # waits behind `first`, then gives up
    assert short.failure is not None and short.failure.reason == "timeout"
    assert (await first).remaining == 1
    await until(lambda: not client._current or not client._current.checks._tasks)
    assert server.seen == ["1"]


async def test_a_short_timeout_does_not_cut_short_the_others_in_its_batch(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target, timeout=5)
    first = asyncio.create_task(check(client, n="0"))
    batch = [check(client, n="1", delay="0.3"), check(client, n="2", timeout=0.1)]
    batch += [check(client, n=str(n)) for n in range(3, 10)]
    decisions = await asyncio.gather(*batch)
    assert (await first).remaining == 0
    short = decisions.pop(1)
    assert short.failure is not None and short.failure.reason == "timeout"
    assert [d.remaining for d in decisions] == [1, *range(3, 10)]
    assert server.calls == {"ShouldRateLimit": 1, "ShouldRateLimitBatch": 1}


async def test_cancelled_callers_leave_the_others_their_answers(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target)
    first = asyncio.create_task(check(client, n="0", delay="0.2"))
    queued = [asyncio.create_task(check(client, n=str(n), delay="0.2")) for n in range(1, 10)]
    await asyncio.sleep(0)
    queued[2].cancel()  # n=3, still queued: never sent
    await until(lambda: "1" in server.seen)  # the batch is out
    queued[4].cancel()  # n=5, in the batch: its answer is dropped
    outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
    assert isinstance(outcomes[3], asyncio.CancelledError)
    assert isinstance(outcomes[5], asyncio.CancelledError)
    kept = [o.remaining for o in outcomes if isinstance(o, Decision)]
    assert kept == [0, 1, 2, 4, 6, 7, 8, 9]
    assert "3" not in server.seen and "5" in server.seen
    assert (await check(client, n="10")).remaining == 10  # and the client goes on


async def test_a_server_without_the_batch_rpc_gets_single_calls_from_then_on(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo(batch=False)
    client = async_client(server.target)
    for wave in range(2):
        numbers = range(wave * 30, wave * 30 + 30)
        decisions = await asyncio.gather(*(check(client, n=str(n)) for n in numbers))
        assert [d.remaining for d in decisions] == list(numbers)
        assert all(d.failure is None for d in decisions)
        assert server.calls == {"ShouldRateLimit": len(server.seen), "ShouldRateLimitBatch": 1}
    assert len(server.seen) == 60


async def test_a_batch_refused_as_a_whole_is_sent_again_as_single_calls(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo(max_batch=5)
    client = async_client(server.target)
    for wave in range(2):  # not remembered: the next batch is tried again
        numbers = range(wave * 30, wave * 30 + 30)
        decisions = await asyncio.gather(*(check(client, n=str(n)) for n in numbers))
        assert [d.remaining for d in decisions] == list(numbers)
        assert server.calls == {
            "ShouldRateLimit": 30 * (wave + 1),
            "ShouldRateLimitBatch": wave + 1,
        }


async def test_coalesce_false_sends_one_call_per_check(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target, coalesce=False)
    decisions = await asyncio.gather(*(check(client, n=str(n)) for n in range(30)))
    assert [d.remaining for d in decisions] == list(range(30))
    assert server.calls == {"ShouldRateLimit": 30}


async def test_the_middleware_coalesces_concurrent_requests(
    start_echo: Callable[..., Awaitable[Echo]], async_client: MakeAsync
) -> None:
    server = await start_echo()
    client = async_client(server.target)

    def descriptors(request: Request) -> list[dict[str, str]]:
        return echo({"n": request.query_params["n"]})

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(RateLimitMiddleware, client=client, domain="echo", descriptors=descriptors)
    async with http(app) as browser:
        responses = await asyncio.gather(*(browser.get(f"/?n={n}") for n in range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert [r.headers["RateLimit-Remaining"] for r in responses] == [str(n) for n in range(100)]
    assert sum(server.calls.values()) <= 10


# Against a real `ratelimitd serve` ---------------------------------------------------------


def served_calls(service: ServiceProcess) -> collections.Counter[str]:
    """How many calls ratelimitd answered, by method (from its /metrics)."""
    url = f"http://127.0.0.1:{service.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    pattern = r'^ratelimitd_request_duration_seconds_count\{method="(\w+)"\} (\S+)$'
    return collections.Counter(
        {method: int(float(count)) for method, count in re.findall(pattern, text, re.MULTILINE)}
    )


async def test_ratelimitd_admits_exactly_the_limit_of_200_coalesced_checks(
    service: ServiceProcess, async_client: MakeAsync
) -> None:
    client = async_client(service.target)
    before = await asyncio.to_thread(served_calls, service)
    decisions = await asyncio.gather(
        *(client.check("web", [{"plan": "large"}]) for _ in range(200))
    )
    calls = await asyncio.to_thread(served_calls, service) - before
    allowed = [d for d in decisions if d.allowed]
    assert sorted(d.remaining for d in allowed) == list(range(50))  # limit: 50 a minute
    assert all(d.retry_after >= 1 and d.remaining == 0 for d in decisions if not d.allowed)
    assert all(d.failure is None and d.limit == 50 for d in decisions)
    assert calls["ShouldRateLimitBatch"] >= 1
    assert calls.total() <= 10


async def test_ratelimitd_refuses_one_coalesced_check_and_decides_the_others(
    service: ServiceProcess, async_client: MakeAsync
) -> None:
    client = async_client(service.target, failure_mode="deny")
    users = [[{"user": f"coalesced-{n}"}] for n in range(20)]
    users[7] = [{"remote_address": "x" * 5000}]
    outcomes = await asyncio.gather(
        *(client.check("web", descriptors) for descriptors in users), return_exceptions=True
    )
    refused = outcomes.pop(7)
    assert isinstance(refused, InvalidRequest) and "INVALID_ARGUMENT" in str(refused)
    assert all(isinstance(d, Decision) and d.allowed and d.remaining == 1 for d in outcomes)
