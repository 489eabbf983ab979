"""Load drivers and measurements shared by the reliability tests.

A *stream* is one client coroutine that sends a call, waits for its answer, and sends the
next: N streams keep N calls in flight. Every call is recorded with when it started and ended
and how it was answered, so a test can say exactly what happened before, during and after a
fault.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT

# How a call was answered:
DECISION = "decision"  # OK with a current limit: the backend counted it
OVER_LIMIT = "over_limit"  # OVER_LIMIT (a real denial, or RATELIMITD_BACKEND_FAILURE=deny)
BLIND_OK = "blind_ok"  # OK without a current limit (RATELIMITD_BACKEND_FAILURE=allow)


def descriptor(*entries: tuple[str, str]) -> ratelimit_pb2.RateLimitDescriptor:
    return ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )


def rl_request(
    domain: str, *descriptors: Sequence[tuple[str, str]], hits: int = 0
) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(
        domain=domain, descriptors=[descriptor(*d) for d in descriptors], hits_addend=hits
    )


def outcome(reply: rls_pb2.RateLimitResponse | grpc.RpcError) -> str:
    if isinstance(reply, grpc.RpcError):
        code = reply.code()
        return code.name if code is not None else "UNKNOWN"
    if reply.overall_code == OVER:
        return OVER_LIMIT
    if all(status.HasField("current_limit") for status in reply.statuses):
        return DECISION
    return BLIND_OK


@dataclass(frozen=True, slots=True)
class Call:
    stream: int
    key: str
    started: float
    ended: float
    outcome: str
    remaining: int | None  # of the first status, for a DECISION or a real OVER_LIMIT
    details: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """`streams` concurrent streams against `stubs` (round robin), until `stop()`.

    `request_for(stream, n)` gives the `n`-th call of a stream as `(key, request)`; the key is
    only a label for the records.
    """

    stubs: Sequence[rls_pb2_grpc.RateLimitServiceStub]
    request_for: Callable[[int, int], tuple[str, rls_pb2.RateLimitRequest]]
    streams: int
    timeout_s: float = 10.0
    calls: list[Call] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _running: bool = False

    def start(self) -> Load:
        self._running = True
        self._tasks = [asyncio.create_task(self._stream(i)) for i in range(self.streams)]
        return self

    async def stop(self) -> list[Call]:
        self._running = False
        await asyncio.gather(*self._tasks)
        return self.calls

    async def _stream(self, stream: int) -> None:
        stub = self.stubs[stream % len(self.stubs)]
        n = 0
        while self._running:
            key, request = self.request_for(stream, n)
            n += 1
            started = time.monotonic()
            try:
                reply: rls_pb2.RateLimitResponse | grpc.RpcError = await stub.ShouldRateLimit(
                    request, timeout=self.timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                reply = exc
            ended = time.monotonic()
            kind = outcome(reply)
            remaining = None
            details = ""
            if isinstance(reply, rls_pb2.RateLimitResponse):
                if kind in (DECISION, OVER_LIMIT) and reply.statuses[0].HasField("current_limit"):
                    remaining = reply.statuses[0].limit_remaining
            else:
                details = reply.details() or ""
            self.calls.append(Call(stream, key, started, ended, kind, remaining, details))


@dataclass
class OpenLoad:
    """Calls that arrive on their own, `rate` per second on average (Poisson), as requests
    reach Envoy: each is sent when it arrives, whatever the others are doing."""

    stub: rls_pb2_grpc.RateLimitServiceStub
    request_for: Callable[[int], tuple[str, rls_pb2.RateLimitRequest]]
    rate: float
    timeout_s: float = 10.0
    seed: int = 7

    async def run(self, duration_s: float) -> list[Call]:
        chance = random.Random(self.seed)
        calls: list[Call] = []
        tasks = []
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < duration_s:
            tasks.append(asyncio.create_task(self._one(n, calls)))
            n += 1
            await asyncio.sleep(chance.expovariate(self.rate))
        await asyncio.gather(*tasks)
        return calls

    async def _one(self, n: int, calls: list[Call]) -> None:
        key, request = self.request_for(n)
        started = time.monotonic()
        try:
            reply: rls_pb2.RateLimitResponse | grpc.RpcError = await self.stub.ShouldRateLimit(
                request, timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            reply = exc
        details = reply.details() or "" if isinstance(reply, grpc.RpcError) else ""
        calls.append(Call(n, key, started, time.monotonic(), outcome(reply), None, details))


class LagMonitor:
    """Measures how late this process's event loop runs (the machine starving it, or a busy
    loop), so that a late answer can be told apart from a slow service.

    A tick sleeps `interval`; whatever it oversleeps is a stall, recorded as
    `(woke_at, lag)`.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LagMonitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            await asyncio.sleep(self.interval)
            woke = time.monotonic()
            self.samples.append((woke, woke - began - self.interval))

    def stalled(self, start: float, end: float) -> float:
        """Seconds the loop stood still during `[start, end]`."""
        return sum(
            lag for woke, lag in self.samples if lag > 0 and woke - lag <= end and woke >= start
        )

    @property
    def worst(self) -> float:
        return max((lag for _, lag in self.samples), default=0.0)


def tally(calls: Sequence[Call]) -> dict[str, int]:
    return dict(Counter(call.outcome for call in calls))


def non_increasing(values: Sequence[int]) -> bool:
    return all(later <= earlier for earlier, later in itertools.pairwise(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
