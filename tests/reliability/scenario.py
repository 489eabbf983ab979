"""One fault under load, measured: the shared body of the fault and restart tests.

Sixteen streams hit eight hot counters while one sequential *probe* stream hits its own
fixed-window counter (one year, a billion hits: no window edge, no denial). A fault is
injected after a baseline, lifted ("healed") after a while, and the load runs on until the
service decides again, then 0.4 s more. Everything is recorded; `check()` then says
whether the service behaved:

- every call is answered within the Redis timeout plus a small margin, with a real decision
  or with the failure mode's answer (UNAVAILABLE, OK, OVER_LIMIT), never anything else;
- during the fault: decisions if Redis still answers in time, else the failure answer;
- the service decides again by itself within 2 s of the fault ending, and stays up: the
  recovery time runs to the first decision after the fault, or to the last failed call if one
  comes later, and the load runs on for 0.4 s after it;
- no asyncio task and no Redis connection is left behind;
- the probe's `limit_remaining` never goes up (no counter goes backwards), and a final admin
  Peek agrees.

The test process's own event loop is watched (`LagMonitor`): on a loaded machine it can stand
still for tens of milliseconds, and that time is not the service's. It is added to the answer
bound, and a call that should have been decided but timed out is excused only when the loop
stood still for at least `STALL_EXCUSE_S` during it. The figures say how many were excused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb
from tests.reliability.conftest import ADMIN_TOKEN, Running
from tests.reliability.harness import (
    BLIND_OK,
    DECISION,
    OVER_LIMIT,
    Call,
    LagMonitor,
    Load,
    non_increasing,
    rl_request,
    tally,
)

RULES = """
domain: rel
descriptors:
  - key: k
    rate_limit: {unit: year, requests_per_unit: 1000000000}  # no window edge, no denial
"""
TIMEOUT_S = 0.1  # RATELIMITD_REDIS_TIMEOUT_MS=100, the default
# "Within the timeout plus a small margin": the margin covers gRPC and the event loop, with
# client, server (and fault proxy) in one process on a shared machine.
MARGIN_S = 0.25
STALL_EXCUSE_S = 0.05
RECOVERY_BOUND_S = 2.0
STREAMS = 16
BASELINE_S = 0.25
FAULT_S = 0.5
STAY_UP_S = 0.4
# Redis connections the service may hold once healthy again: the backend's pipelined
# connection (or a small redis-py pool) and the health check's.
LIVE_CONNECTIONS_BOUND = 4
FAILURE_ANSWER = {"error": "UNAVAILABLE", "allow": BLIND_OK, "deny": OVER_LIMIT}
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def load_request(stream: int, n: int) -> tuple[str, rls_pb2.RateLimitRequest]:
    value = f"s{stream % 8}"
    return value, rl_request("rel", [("k", value)])


def probe_request(stream: int, n: int) -> tuple[str, rls_pb2.RateLimitRequest]:
    return "probe", rl_request("rel", [("k", "probe")])


@dataclass
class Fault:
    """What to do to Redis or the link, and how to see the service's Redis connections.

    `inject` and `heal` block (they run in a thread); `heal` returns once the fault is over
    (Redis answering again, the link restored).
    """

    inject: Callable[[], object]
    heal: Callable[[], object]
    connections: Callable[[], int]
    fault_s: float = FAULT_S
    peak: Callable[[], int | None] = lambda: None


@dataclass
class Outcome:
    """What one fault under load did, measured."""

    timeout_s: float
    calls: list[Call]
    probe: list[Call]
    fault_began: float
    heal_began: float
    fault_ended: float
    recovery_s: float | None
    tasks_before: int
    tasks_after: int
    connections_after: int
    peak_connections: int | None
    peek_remaining: int
    lag: LagMonitor = field(repr=False)

    def stalled(self, call: Call) -> float:
        return self.lag.stalled(call.started, call.ended)

    def late(self, call: Call) -> bool:
        return call.latency > self.timeout_s + MARGIN_S + self.stalled(call)

    def before(self) -> list[Call]:
        return [c for c in self.calls + self.probe if c.ended < self.fault_began]

    def during(self) -> list[Call]:
        """Calls that started once the fault had taken hold and ended before healing began."""
        return [
            c
            for c in self.calls
            if c.started >= self.fault_began + self.timeout_s and c.ended <= self.heal_began
        ]

    def after_recovery(self) -> list[Call]:
        assert self.recovery_s is not None
        recovered = self.fault_ended + self.recovery_s
        return [c for c in self.calls + self.probe if c.started >= recovered]

    def should_decide(self, answered_during_fault: bool) -> list[Call]:
        """The calls that Redis was there for: all of them if it answered in time throughout."""
        if answered_during_fault:
            return self.calls + self.probe
        return self.before() + (self.after_recovery() if self.recovery_s is not None else [])

    def remaining(self) -> list[int]:
        return [
            c.remaining for c in self.probe if c.outcome == DECISION and c.remaining is not None
        ]

    def probe_around_fault(self) -> tuple[int | None, int | None]:
        """The probe's `limit_remaining`: its last decision before the fault, its first after."""
        decided = [c for c in self.probe if c.outcome == DECISION and c.remaining is not None]
        before = [c.remaining for c in decided if c.ended < self.fault_began]
        after = [c.remaining for c in decided if c.started >= self.fault_ended]
        return (before[-1] if before else None, after[0] if after else None)

    def figures(self, answered_during_fault: bool = False) -> dict[str, object]:
        everything = self.calls + self.probe
        failed = [c for c in self.should_decide(answered_during_fault) if c.outcome != DECISION]
        excused = [c for c in failed if self.stalled(c) >= STALL_EXCUSE_S]
        return {
            "calls": len(everything),
            "outcomes": tally(everything),
            "during_fault": tally(self.during()),
            "max_latency_ms": round(max(c.latency for c in everything) * 1000, 1),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 3),
            "tasks_before_after": (self.tasks_before, self.tasks_after),
            "redis_connections_after": self.connections_after,
            "redis_connections_peak": self.peak_connections,
            "worst_loop_stall_ms": round(self.lag.worst * 1000, 1),
            "failed_where_redis_answered": len(failed),
            "of_which_excused_by_loop_stalls": len(excused),
            "probe_remaining_before_after_fault": self.probe_around_fault(),
        }


async def under_load(service: Running, fault: Fault, timeout_s: float = TIMEOUT_S) -> Outcome:
    # warm: every counter's node connected to and its script loaded (a Cluster has three).
    # A cold start (topology, connections, SCRIPT LOAD on each node) may itself take longer
    # than the 100 ms timeout on a loaded machine, and is then answered UNAVAILABLE: retried.
    warm = rl_request("rel", *[[("k", f"s{i}")] for i in range(8)], [("k", "probe")])
    warmed, deadline = 0, time.monotonic() + 10
    while warmed < 3:
        try:
            await service.stub.ShouldRateLimit(warm, timeout=5)
            warmed += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
    lag = LagMonitor().start()
    tasks_before = len(asyncio.all_tasks())
    load = Load([service.stub], load_request, STREAMS).start()
    probe = Load([service.stub], probe_request, 1).start()
    await asyncio.sleep(BASELINE_S)

    fault_began = time.monotonic()
    await asyncio.to_thread(fault.inject)
    await asyncio.sleep(fault.fault_s)
    heal_began = time.monotonic()
    await asyncio.to_thread(fault.heal)
    fault_ended = time.monotonic()

    def recovered() -> float | None:
        """Seconds from the fault's end to the service deciding again for good: the first
        decision after it, or the end of the last failed call (loop stalls aside)."""
        everything = load.calls + probe.calls
        decided = [c.ended for c in everything if c.outcome == DECISION and c.ended >= fault_ended]
        if not decided:
            return None
        failed = [
            c.ended
            for c in everything
            if c.outcome != DECISION
            and c.ended >= fault_ended
            and lag.stalled(c.started, c.ended) < STALL_EXCUSE_S
        ]
        return max([min(decided), *failed]) - fault_ended

    # run on until the service has decided without a failure for STAY_UP_S
    for _ in range(int((RECOVERY_BOUND_S + STAY_UP_S + 1.0) / 0.02)):
        settled = recovered()
        if settled is not None and time.monotonic() - fault_ended - settled >= STAY_UP_S:
            break
        await asyncio.sleep(0.02)
    calls = await load.stop()
    probe_calls = await probe.stop()

    await asyncio.sleep(0.3)  # let finished calls and closed connections wind down
    tasks_after = len(asyncio.all_tasks())
    await lag.stop()
    connections = await asyncio.to_thread(_settled_connections, fault.connections)
    peek = await service.admin.Peek(
        admin_pb.PeekRequest(
            domain="rel",
            descriptors=[admin_pb.Descriptor(entries=[admin_pb.Entry(key="k", value="probe")])],
        ),
        metadata=AUTH,
        timeout=5,
    )
    return Outcome(
        timeout_s,
        calls,
        probe_calls,
        fault_began,
        heal_began,
        fault_ended,
        recovered(),
        tasks_before,
        tasks_after,
        connections,
        fault.peak(),
        peek.states[0].remaining,
        lag,
    )


def _settled_connections(count: Callable[[], int], timeout: float = 2.0) -> int:
    deadline = time.monotonic() + timeout
    while (now := count()) > LIVE_CONNECTIONS_BOUND and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def check(
    outcome: Outcome,
    mode: str,
    during_fault: str,
    counters_survive: bool = True,
    connections_bound: int = LIVE_CONNECTIONS_BOUND,
) -> None:
    """`during_fault`: "decisions" (Redis still answers in time), "failures" or "either"."""
    failure = FAILURE_ANSWER[mode]
    everything = outcome.calls + outcome.probe
    # every call answered, in time, with a decision or the failure mode's answer
    unexpected = [c for c in everything if c.outcome not in (DECISION, failure)]
    assert not unexpected, unexpected[:5]
    late = [c for c in everything if outcome.late(c)]
    assert not late, f"{len(late)} calls over {outcome.timeout_s + MARGIN_S} s: {late[:3]}"
    during = outcome.during()
    assert during, "no call during the fault"
    if during_fault == "failures":
        assert {c.outcome for c in during} == {failure}, tally(during)
    # recovery, by itself, in time, and for good
    assert outcome.recovery_s is not None, "never decided again after the fault"
    assert outcome.recovery_s < RECOVERY_BOUND_S
    # decisions wherever Redis was answering, except where this process stood still
    failed = [
        c
        for c in outcome.should_decide(during_fault == "decisions")
        if c.outcome != DECISION and outcome.stalled(c) < STALL_EXCUSE_S
    ]
    assert not failed, failed[:5]
    # nothing leaked
    assert outcome.tasks_after <= outcome.tasks_before, (outcome.tasks_before, outcome.tasks_after)
    assert outcome.connections_after <= connections_bound
    # no counter went backwards
    remaining = outcome.remaining()
    assert len(remaining) > 2
    if counters_survive:
        assert non_increasing(remaining), remaining
        assert outcome.peek_remaining <= remaining[-1]
