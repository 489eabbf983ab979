"""One load point: rounds of h2load against a target, with the target's CPU, RSS, Redis
commands and ratelimitd metrics sampled at the start and the end of each round's measured
phase (after h2load's warm-up), so every ratio is taken over the same window."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, procstat, stats
from bench.targets import Target


@dataclass
class Snapshot:
    at: float
    target: procstat.TreeSample
    redis: procstat.TreeSample
    commands: stats.Counters
    metrics: stats.Counters


def snapshot(target: Target, redis_pids: list[int]) -> Snapshot:
    metrics = stats.scrape_metrics(target.metrics_url) if target.metrics_url else {}
    commands = stats.redis_commandstats(target.redis) if target.redis else {}
    return Snapshot(
        time.monotonic(),
        procstat.sample(target.pids),
        procstat.sample(redis_pids) if redis_pids else procstat.TreeSample({}, 0),
        commands,
        metrics,
    )


@dataclass
class Window:
    """Sums of deltas over the measured phases of every round of a point."""

    seconds: float = 0.0
    target_cpu: float = 0.0
    redis_cpu: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    rss_bytes: int = 0

    def add(self, start: Snapshot, end: Snapshot, backend: str) -> None:
        self.seconds += end.at - start.at
        self.target_cpu += procstat.cpu_delta(start.target, end.target)
        self.redis_cpu += procstat.cpu_delta(start.redis, end.redis)
        self.rss_bytes = max(self.rss_bytes, end.target.rss)
        found: dict[str, float | None] = {
            "evalsha": stats.counter_delta(start.commands, end.commands, "evalsha"),
            "redis_commands": stats.counter_delta(start.commands, end.commands, "_total"),
        }
        if end.metrics:
            found |= {
                "decisions": stats.delta(
                    start.metrics, end.metrics, "ratelimitd_decisions_total", backend=backend
                ),
                "round_trips": stats.delta(
                    start.metrics, end.metrics, "ratelimitd_backend_round_trips_total"
                ),
                "script_calls": stats.delta(
                    start.metrics, end.metrics, "ratelimitd_backend_commands_total"
                ),
                "hits": stats.delta(start.metrics, end.metrics, "ratelimitd_total_hits_total"),
                "over_limit": stats.delta(
                    start.metrics, end.metrics, "ratelimitd_over_limit_total"
                ),
                "backend_errors": stats.delta(
                    start.metrics, end.metrics, "ratelimitd_backend_errors_total"
                )
                or 0.0,  # the labelled counter has no series before the first error
            }
        for name, value in found.items():
            if value is not None:
                self.counters[name] = self.counters.get(name, 0.0) + value


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass
class Point:
    target: str
    load: str  # "sweep" | "half-peak"
    concurrency: int
    connections: int
    streams: int
    processes: int
    descriptors: int
    rounds: int
    seconds: float
    calls: int
    errors: int  # h2load's failed, errored, timed out and non-2xx requests
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    distinct_payloads: int
    rps_per_client: float | None = None
    cpu_s_per_1k: float | None = None  # the target's process tree
    cpu_cores: float | None = None
    redis_cpu_s_per_1k: float | None = None
    round_trips_per_decision: float | None = None  # ratelimitd's metrics
    script_calls_per_decision: float | None = None  # ratelimitd's metrics
    evalsha_per_decision: float | None = None  # Redis INFO commandstats
    redis_commands_per_decision: float | None = None  # every command Redis ran (INFO)
    over_limit_share: float | None = None
    metrics_decisions_check: float | None = None  # decisions by metrics / by h2load, ~1
    rss_mb: float | None = None
    # calls answered UNAVAILABLE (or allow/deny by RATELIMITD_BACKEND_FAILURE) because the
    # backend failed, from ratelimitd's metrics: h2load sees HTTP 200 for every gRPC status
    backend_errors: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


class PointRecorder:
    """One point, measured round by round: the sweep interleaves the rounds of all targets
    (round 1 of each, then round 2 of each, ...), so that drift over tens of seconds on a
    shared machine falls on every target alike, not on whichever ran during it."""

    def __init__(
        self,
        target: Target,
        redis_pids: list[int],
        shape: loadgen.Shape,
        descriptors: int,
        workdir: Path,
        load: str = "sweep",
    ) -> None:
        self.target = target
        self.redis_pids = redis_pids
        self.shape = shape
        self.descriptors = descriptors
        self.workdir = workdir
        self.load = load
        self.window = Window()
        self.seen: list[tuple[loadgen.Round, list[loadgen.ProcessResult]]] = []

    def run_round(self, spec: loadgen.Round) -> None:
        marks: list[Snapshot] = []

        def mark() -> None:
            marks.append(snapshot(self.target, self.redis_pids))

        results = loadgen.run_round(spec, self.workdir, mark)
        if len(marks) == 2:
            self.window.add(marks[0], marks[1], self.target.backend)
        self.seen.append((spec, results))

    def point(self) -> Point:
        """What the rounds so far saw, as one Point."""
        target, window, rounds = self.target, self.window, [spec for spec, _ in self.seen]
        summary = loadgen.summarize(self.seen)
        bodies = {str(body) for spec in rounds for body in spec.bodies}
        per_call = self.descriptors if target.protocol == "grpc" else 1
        decisions_per_s = summary.calls_per_s * per_call
        cpu_rate = _ratio(window.target_cpu, window.seconds)
        redis_rate = _ratio(window.redis_cpu, window.seconds) if self.redis_pids else None
        counters = window.counters
        decisions = counters.get("decisions")
        if decisions is None and target.protocol == "http" and target.backend != "none":
            decisions = summary.calls_per_s * window.seconds  # one decision per HTTP request
        shape = self.shape
        return Point(
            target=target.name,
            load=self.load,
            concurrency=shape.concurrency,
            connections=shape.connections,
            streams=shape.streams,
            processes=shape.processes,
            descriptors=per_call,
            rounds=summary.rounds,
            seconds=summary.seconds,
            calls=summary.calls,
            errors=summary.errors,
            calls_per_s=summary.calls_per_s,
            p50_ms=summary.p50_ms,
            p99_ms=summary.p99_ms,
            p999_ms=summary.p999_ms,
            max_ms=summary.max_ms,
            distinct_payloads=len(bodies),
            rps_per_client=rounds[0].rps_per_client if rounds else None,
            cpu_s_per_1k=_ratio(cpu_rate, decisions_per_s / 1000),
            cpu_cores=cpu_rate,
            redis_cpu_s_per_1k=_ratio(redis_rate, decisions_per_s / 1000),
            round_trips_per_decision=_ratio(counters.get("round_trips"), decisions),
            script_calls_per_decision=_ratio(counters.get("script_calls"), decisions),
            evalsha_per_decision=_ratio(counters.get("evalsha"), decisions)
            if target.redis
            else None,
            redis_commands_per_decision=_ratio(counters.get("redis_commands"), decisions)
            if target.redis
            else None,
            over_limit_share=_ratio(counters.get("over_limit"), counters.get("hits")),
            metrics_decisions_check=_ratio(
                _ratio(counters.get("decisions"), window.seconds), decisions_per_s
            ),
            rss_mb=window.rss_bytes / 2**20 if window.rss_bytes else None,
            backend_errors=int(counters["backend_errors"])
            if "backend_errors" in counters
            else None,
        )


def run_point(
    target: Target,
    redis_pids: list[int],
    shape: loadgen.Shape,
    descriptors: int,
    rounds: list[loadgen.Round],
    workdir: Path,
    load: str = "sweep",
) -> Point:
    """Runs `rounds` (each with its own bodies) and turns what they saw into one Point."""
    recorder = PointRecorder(target, redis_pids, shape, descriptors, workdir, load)
    for spec in rounds:
        recorder.run_round(spec)
    return recorder.point()


def run_interleaved(
    recorders: list[PointRecorder], rounds: list[list[loadgen.Round]]
) -> list[Point]:
    """Round i of every target before round i+1 of any; every other round in reverse order,
    so that no target always follows the same one."""
    for index in range(max(map(len, rounds), default=0)):
        order = list(zip(recorders, rounds, strict=True))
        for recorder, specs in order if index % 2 == 0 else reversed(order):
            if index < len(specs):
                recorder.run_round(specs[index])
    return [recorder.point() for recorder in recorders]
