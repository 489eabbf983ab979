"""The whole run: Redis, every target, the sweep, FastAPI, the memory floor, the report.

Targets of one phase run side by side and the sweep interleaves them (for each descriptor
count, for each concurrency, round 1 of every target, then round 2 of every target, ...), so
drift of a shared, noisy machine hits all of them alike; only the target being driven gets
load.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO_ROOT, floors, grpc_check, loadgen, machine, payloads, report, stats, targets
from bench.measure import Point, PointRecorder, run_interleaved, run_point
from bench.targets import Target

DEFAULT_OUT = REPO_ROOT / "bench" / "results"
GRPC_TARGETS = ("baseline", "rl-memory", "rl-redis", "rl-redis-w2", "rl-cluster")
FASTAPI_KINDS = ("none", "slowapi", "ratelimitd")


@dataclass
class Options:
    quick: bool = False
    cluster: bool = False
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256])
    descriptors: list[int] = field(default_factory=lambda: [1, 3])
    duration_s: float = 10.0
    round_s: float = 2.0  # each round draws fresh payloads
    warmup_s: float = 0.3
    keys: int = 10_000
    hot: float = 0.1
    hot_keys: int | None = None  # default: keys // 1000, at least 1
    seed: int = 1
    streams: int = 4
    max_processes: int = 8
    prefill: bool = True
    half_peak: bool = True
    paced_concurrency: int = 64  # the layout of the half-peak point (16 connections x 4)
    targets: list[str] = field(default_factory=lambda: list(GRPC_TARGETS))
    fastapi: bool = True
    fastapi_concurrency: list[int] = field(default_factory=lambda: [64])
    memory_keys: int = 1_000_000
    out: Path = DEFAULT_OUT
    ratelimitd_src: Path | None = None  # run ratelimitd from another checkout's root
    # more ratelimitd versions to run side by side: (label, source root) -> `rl-redis@label`...
    also_src: list[tuple[str, Path]] = field(default_factory=list)
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))

    @property
    def space(self) -> payloads.KeySpace:
        hot_keys = self.hot_keys if self.hot_keys is not None else max(1, self.keys // 1000)
        return payloads.KeySpace(self.keys, self.hot, min(hot_keys, self.keys), self.seed)

    def rounds_for(self, duration_s: float) -> list[float]:
        count = max(1, round(duration_s / self.round_s))
        return [duration_s / count] * count


@dataclass
class Run:
    options: Options
    workdir: Path
    points: list[Point] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # counter keys h2load payloads touched
    notes: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.options.log(line)


def _bodies(run: Run, shape: loadgen.Shape, descriptors: int, round_index: int) -> list[Path]:
    """One freshly drawn payload per h2load process (the same draws for every target)."""
    space = run.options.space
    bodies = []
    folder = run.workdir / "payloads"
    folder.mkdir(exist_ok=True)
    for process in range(shape.processes):
        rng = space.rng(shape.concurrency, descriptors, round_index, process)
        user = space.draw_user(rng)
        run.touched |= payloads.counter_keys(space, user, descriptors)
        path = folder / f"c{shape.concurrency}-d{descriptors}-r{round_index}-p{process}.bin"
        path.write_bytes(payloads.grpc_frame(payloads.request(space, user, descriptors)))
        bodies.append(path)
    return bodies


def _grpc_rounds(
    run: Run, target: Target, shape: loadgen.Shape, descriptors: int, rps: float | None = None
) -> list[loadgen.Round]:
    opts = run.options
    return [
        loadgen.Round(
            url=target.url,
            shape=shape,
            duration_s=seconds,
            warmup_s=opts.warmup_s,
            bodies=_bodies(run, shape, descriptors, index),
            rps_per_client=rps,
        )
        for index, seconds in enumerate(opts.rounds_for(opts.duration_s))
    ]


def _describe(point: Point) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"  {point.target:<20} c={point.concurrency:<4} d={point.descriptors} "
        f"{point.calls_per_s:9.0f} calls/s  p50 {point.p50_ms:6.2f}  p99 {point.p99_ms:7.2f}  "
        f"p999 {point.p999_ms:7.2f} ms  cpu/1k {fmt(point.cpu_s_per_1k, '.3f')} s  "
        f"rt/dec {fmt(point.round_trips_per_decision, '.3f')}  errors {point.errors}"
        + (f"+{point.backend_errors} backend" if point.backend_errors else "")
    )


@contextlib.contextmanager
def _redis(run: Run) -> Iterator[dict[str, Any]]:
    """A standalone Redis, and a 3-master Cluster when asked for."""
    from tests.servers.redis import RedisCluster, RedisServer

    found: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer(name="bench-redis"))
        found["redis"] = server
        if run.options.cluster and "rl-cluster" in run.options.targets:
            found["cluster"] = stack.enter_context(RedisCluster(masters=3, replicas_per_master=0))
            run.log(f"cluster up: {found['cluster'].url}")
        run.log(f"redis up: {server.url}")
        yield found


def _start_grpc_target(run: Run, name: str, servers: dict[str, Any]) -> Target:
    """`name` is a target of GRPC_TARGETS, or `rl-...@LABEL` for a version of --also-src."""
    redis_server = servers["redis"]
    base, _, label = name.partition("@")
    src = dict(run.options.also_src)[label] if label else run.options.ratelimitd_src
    version = f" ({label})" if label else ""
    if base == "baseline" and not label:
        return targets.baseline()
    if base == "rl-memory":
        return targets.ratelimitd(
            name, f"ratelimitd, memory backend{version}", "memory", ratelimitd_src=src
        )
    if base in ("rl-redis", "rl-redis-w2"):
        workers = 2 if base == "rl-redis-w2" else 1
        return targets.ratelimitd(
            name,
            f"ratelimitd, Redis, --workers {workers}{version}",
            "redis",
            redis_server.url,
            [(redis_server.host, redis_server.port)],
            workers,
            {"RATELIMITD_KEY_PREFIX": f"{name}:"},
            src,
        )
    if base == "rl-cluster":
        cluster = servers["cluster"]
        return targets.ratelimitd(
            name,
            f"ratelimitd, Redis Cluster (3 masters){version}",
            "redis",
            cluster.url,
            list(cluster.startup_nodes),
            ratelimitd_src=src,
        )
    raise ValueError(f"unknown target {name!r}: expected one of {GRPC_TARGETS}")


def _failed(run: Run, name: str, exc: Exception) -> None:
    """A target that cannot start or answers wrongly is reported, and the run goes on."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    run.skipped[name] = f"failed: {first}"
    run.log(f"  {name} FAILED: {exc}")


def _start_grpc_targets(run: Run, servers: dict[str, Any]) -> list[Target]:
    wanted = [name for name in run.options.targets if name != "rl-cluster" or "cluster" in servers]
    wanted += [
        f"{name}@{label}" for label, _ in run.options.also_src for name in list(wanted)
        if name != "baseline"
    ]  # fmt: skip
    if "rl-cluster" in run.options.targets and "cluster" not in servers:
        run.skipped["rl-cluster"] = "not asked for (--cluster)"
    started: list[Target] = []
    for name in wanted:
        run.log(f"starting {name}")
        try:
            started.append(_start_grpc_target(run, name, servers))
        except ValueError:
            for target in started:
                target.stop()
            raise
        except Exception as exc:
            _failed(run, name, exc)
    return started


def _prepare(run: Run, target: Target) -> None:
    space = run.options.space
    grpc_check.verify(target.address, space, target.limited)
    if run.options.prefill and target.limited:
        started = time.monotonic()
        calls = grpc_check.prefill(target.address, space)
        run.log(
            f"  {target.name}: verified; prefilled {calls} users x {payloads.MAX_DESCRIPTORS} "
            f"descriptors in {time.monotonic() - started:.1f} s"
        )
    else:
        run.log(f"  {target.name}: verified")


def grpc_phase(run: Run, servers: dict[str, Any]) -> None:
    opts = run.options
    redis_addresses = [(servers["redis"].host, servers["redis"].port)]
    if "cluster" in servers:
        redis_addresses += list(servers["cluster"].startup_nodes)
    stats.flush(redis_addresses)
    running = _start_grpc_targets(run, servers)
    try:
        for target in list(running):
            try:
                _prepare(run, target)
            except Exception as exc:
                _failed(run, target.name, exc)
                target.stop()
                running.remove(target)
        pids = {t.name: stats.redis_pids(t.redis) if t.redis else [] for t in running}
        for descriptors in opts.descriptors:
            for concurrency in opts.concurrency:
                shape = loadgen.shape_for(concurrency, opts.streams, opts.max_processes)
                recorders = [
                    PointRecorder(t, pids[t.name], shape, descriptors, run.workdir) for t in running
                ]
                rounds = [_grpc_rounds(run, t, shape, descriptors) for t in running]
                for point in run_interleaved(recorders, rounds):
                    run.points.append(point)
                    run.log(_describe(point))
        if opts.half_peak:
            for target in running:
                if target.name == "rl-redis":
                    _half_peak(run, target, pids[target.name])
    finally:
        for target in running:
            target.stop()


def _half_peak(run: Run, target: Target, redis_pids: list[int]) -> None:
    """Latency at half of the target's peak throughput, h2load pacing each connection."""
    opts = run.options
    for descriptors in opts.descriptors:
        sweep = [
            p
            for p in run.points
            if p.target == target.name and p.descriptors == descriptors and p.load == "sweep"
        ]
        if not sweep:
            continue
        peak = max(sweep, key=lambda p: p.calls_per_s)
        shape = loadgen.shape_for(opts.paced_concurrency, opts.streams, opts.max_processes)
        rps = peak.calls_per_s / 2 / shape.connections
        rounds = _grpc_rounds(run, target, shape, descriptors, rps)
        point = run_point(
            target, redis_pids, shape, descriptors, rounds, run.workdir, load="half-peak"
        )
        run.points.append(point)
        run.log(_describe(point) + f"  (half of {peak.calls_per_s:.0f})")


def fastapi_phase(run: Run, servers: dict[str, Any]) -> None:
    from bench.fastapi_apps import client_available

    opts = run.options
    redis_server = servers["redis"]
    single = [(redis_server.host, redis_server.port)]
    stats.flush(single)
    kinds = list(FASTAPI_KINDS)
    missing = client_available()
    if missing is not None:
        kinds.remove("ratelimitd")
        run.skipped["fastapi-ratelimitd"] = f"skipped: {missing}"
        run.log(f"fastapi-ratelimitd skipped: {missing}")
    running: list[Target] = []
    limiter: Target | None = None
    try:
        for kind in kinds:
            run.log(f"starting fastapi-{kind}")
            try:
                if kind == "ratelimitd":
                    limiter = targets.ratelimitd(
                        "rl-for-fastapi", "ratelimitd, Redis", "redis", redis_server.url,
                        single, extra_env={"RATELIMITD_KEY_PREFIX": "fastapi:"},
                        ratelimitd_src=opts.ratelimitd_src,
                    )  # fmt: skip
                    app = targets.fastapi_app(kind, redis_server.url, single, limiter)
                else:
                    app = targets.fastapi_app(kind, redis_server.url, single)
                running.append(app)
                targets.verify_http(app)
            except Exception as exc:
                _failed(run, f"fastapi-{kind}", exc)
                if running and running[-1].name == f"fastapi-{kind}":
                    running.pop().stop()
        pids = stats.redis_pids(single)
        for concurrency in opts.fastapi_concurrency:
            shape = loadgen.Shape(concurrency, concurrency, 1, _split(concurrency, opts))
            recorders = [
                PointRecorder(t, pids if t.redis else [], shape, 1, run.workdir) for t in running
            ]
            rounds = [
                [
                    loadgen.Round(target.url, shape, seconds, opts.warmup_s, http1=True)
                    for seconds in opts.rounds_for(opts.duration_s)
                ]
                for target in running
            ]
            for point in run_interleaved(recorders, rounds):
                run.points.append(point)
                run.log(_describe(point))
    finally:
        for target in running:
            target.stop()
        if limiter is not None:
            limiter.stop()


def _split(connections: int, opts: Options) -> tuple[int, ...]:
    processes = max(1, min(connections, opts.max_processes))
    base, extra = divmod(connections, processes)
    return tuple(base + (1 if i < extra else 0) for i in range(processes))


def memory_phase(run: Run, src: Path | None, label: str = "") -> dict[str, Any]:
    keys = run.options.memory_keys
    run.log(f"memory floor{' of ' + label if label else ''}: {keys} live keys in a fresh process")
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory_keys", "--keys", str(keys)],
        cwd=targets.neutral_cwd(),
        env={**os.environ, "PYTHONPATH": targets.python_path(src)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    run.log(
        f"  {found['live_keys']} live keys: RSS {found['rss_after_mb']:.0f} MB "
        f"(+{found['growth_mb']:.0f} MB, {found['bytes_per_key']:.0f} B/key)"
    )
    return found


def run_all(opts: Options) -> dict[str, Any]:
    loadgen.h2load_binary()  # fail at once, before starting anything, when h2load is missing
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        run = Run(opts, Path(tmp))
        memory: dict[str, Any] | None = None
        with _redis(run) as servers:
            info = servers["redis"].info("server")
            env = machine.describe(info.get("redis_version", "unknown"))
            grpc_phase(run, servers)
            if opts.fastapi:
                fastapi_phase(run, servers)
        memory_by_src: dict[str, Any] = {}
        if opts.memory_keys > 0:
            memory = memory_phase(run, opts.ratelimitd_src)
            for label, src in opts.also_src:
                memory_by_src[label] = memory_phase(run, src, label)
    env["loadavg_end"] = list(os.getloadavg())
    space = opts.space
    results: dict[str, Any] = {
        "date": stamp.strftime("%Y-%m-%d"),
        "started_utc": stamp.isoformat(timespec="seconds"),
        "runtime_s": round(time.monotonic() - started, 1),
        "command": "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "",
        "machine": env,
        "options": {
            "quick": opts.quick,
            "cluster": opts.cluster,
            "concurrency": opts.concurrency,
            "descriptors": opts.descriptors,
            "duration_s": opts.duration_s,
            "round_s": opts.round_s,
            "warmup_s": opts.warmup_s,
            "keys": space.keys,
            "hot": space.hot,
            "hot_keys": space.hot_keys,
            "seed": space.seed,
            "streams": opts.streams,
            "max_processes": opts.max_processes,
            "prefill": opts.prefill,
            "paced_concurrency": opts.paced_concurrency,
            "fastapi_concurrency": opts.fastapi_concurrency,
            "memory_keys": opts.memory_keys,
            "ratelimitd_src": str(opts.ratelimitd_src) if opts.ratelimitd_src else None,
            "also_src": {label: str(src) for label, src in opts.also_src},
        },
        "keys_touched_by_h2load": len(run.touched),
        "counters_prefilled": space.keys * payloads.MAX_DESCRIPTORS if opts.prefill else 0,
        "targets": _target_descriptions(run),
        "skipped": run.skipped,
        "points": [point.as_dict() for point in run.points],
        "memory": memory,
        "memory_by_src": memory_by_src,
    }
    results["floors"] = [floor.as_dict() for floor in floors.evaluate(results)]
    return results


def _target_descriptions(run: Run) -> dict[str, str]:
    names = {p.target for p in run.points}
    described = {
        "baseline": "empty grpc.aio server returning a constant OK (same grpcio)",
        "rl-memory": "ratelimitd, memory backend",
        "rl-redis": "ratelimitd, Redis",
        "rl-redis-w2": "ratelimitd, Redis, --workers 2",
        "rl-cluster": "ratelimitd, Redis Cluster (3 masters)",
        "fastapi-none": "FastAPI app, no rate limiting",
        "fastapi-slowapi": "FastAPI app + slowapi (Redis storage)",
        "fastapi-ratelimitd": "FastAPI app + ratelimitd_client RateLimitMiddleware (ratelimitd on Redis)",
    }
    found = {name: text for name, text in described.items() if name in names}
    for name in sorted(names - set(described)):
        base, _, label = name.partition("@")
        src = dict(run.options.also_src).get(label)
        found[name] = f"{described.get(base, base)}, from {src}"
    return found


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / results["date"]
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path = stem.with_suffix(".md")
    md_path.write_text(report.markdown(results))
    charts = report.charts(
        results, out / f"{results['date']}-throughput.png", out / f"{results['date']}-latency.png"
    )
    return [json_path, md_path, *charts]
