"""Drives a target with h2load (nghttp2-client) and reads back throughput and latency.

Concurrency is connections x streams. The connections are spread over several h2load
processes (each `-t 1`) running side by side; over gRPC each process repeats its own request
body (see payloads.py). Latency comes from h2load's `--log-file` (microseconds from the start
of a request to the end of its response), percentiles are computed here, over every request of
every process and round of a point. Requests of the warm-up phase are neither logged nor
counted.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

H2LOAD = "h2load"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
MARK_SLACK_S = 0.05  # h2load's own start-up, before its warm-up timer runs


def h2load_binary() -> str:
    """h2load's path; fails (never skips) when it is missing."""
    path = shutil.which(H2LOAD)
    if path is None:
        raise RuntimeError(
            "h2load is not installed: the benchmark needs Debian's nghttp2-client "
            "(apt-get install nghttp2-client)"
        )
    return path


def h2load_version() -> str:
    try:
        out = subprocess.run(
            [h2load_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


@dataclass(frozen=True)
class Shape:
    """How a concurrency level is laid out over connections, streams and processes."""

    concurrency: int
    connections: int
    streams: int
    per_process: tuple[int, ...]  # connections of each h2load process

    @property
    def processes(self) -> int:
        return len(self.per_process)


def shape_for(concurrency: int, streams: int = 4, max_processes: int = 8) -> Shape:
    """`concurrency` streams as up to `streams` per connection; connections over up to
    `max_processes` h2load processes. 64 gives 16 connections x 4 streams in 8 processes."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    streams = max(1, min(streams, concurrency))
    connections = max(1, concurrency // streams)
    processes = max(1, min(connections, max_processes))
    base, extra = divmod(connections, processes)
    per_process = tuple(base + (1 if i < extra else 0) for i in range(processes))
    return Shape(connections * streams, connections, streams, per_process)


@dataclass
class ProcessResult:
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    non_2xx: int = 0
    latencies_us: list[int] = field(default_factory=list)
    output: str = ""


_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def parse_summary(text: str) -> ProcessResult:
    result = ProcessResult(output=text[-2000:])
    match = _REQUESTS.search(text)
    if match is None:
        raise RuntimeError(f"h2load printed no summary:\n{text[-2000:]}")
    result.succeeded, result.failed, result.errored, result.timeout = (
        int(match.group(i)) for i in (4, 5, 6, 7)
    )
    status = _STATUS.search(text)
    if status is not None:
        result.non_2xx = sum(int(status.group(i)) for i in (2, 3, 4))
    return result


def read_log(path: Path) -> list[int]:
    """Microseconds to the end of each response with a 2xx status."""
    latencies = []
    with path.open() as log:
        for line in log:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                latencies.append(int(parts[2]))
    return latencies


@dataclass(frozen=True)
class Round:
    """One round: every process starts together and runs `duration_s` after a warm-up."""

    url: str
    shape: Shape
    duration_s: float
    warmup_s: float = 0.3
    bodies: Sequence[Path] = ()  # one per process (gRPC); empty for GET over HTTP/1.1
    rps_per_client: float | None = None
    http1: bool = False


def _command(spec: Round, index: int, log: Path) -> list[str]:
    command = [
        h2load_binary(),
        "-t", "1",
        "-c", str(spec.shape.per_process[index]),
        "-m", str(spec.shape.streams),
        "-D", f"{int(spec.duration_s * 1000)}ms",
        "--warm-up-time", f"{int(spec.warmup_s * 1000)}ms",
        "--log-file", str(log),
    ]  # fmt: skip
    if spec.http1:
        command.append("--h1")
    if spec.rps_per_client is not None:
        command += ["--rps", f"{spec.rps_per_client:.3f}"]
    if spec.bodies:
        command += ["-d", str(spec.bodies[index])]
        for header in GRPC_HEADERS:
            command += ["-H", header]
    command.append(spec.url)
    return command


def run_round(
    spec: Round, workdir: Path, mark: Callable[[], None] | None = None
) -> list[ProcessResult]:
    """Runs the processes of one round side by side and returns what each one saw.

    `mark` is called when the measured phase starts (after the warm-up) and when it ends,
    by this process's clock: the caller samples its counters there.
    """
    if spec.bodies and len(spec.bodies) != spec.shape.processes:
        raise ValueError("one body per h2load process")
    workdir.mkdir(parents=True, exist_ok=True)
    running = []
    # h2load paces each connection with a timer of max(10 ms, 1/rps); connections started
    # together fire together. Staggering the processes over one period spreads the bursts.
    stagger = (
        max(0.01, 1 / spec.rps_per_client) / spec.shape.processes if spec.rps_per_client else 0
    )
    for index in range(spec.shape.processes):
        if stagger and index:
            time.sleep(stagger)
        log = workdir / f"h2load-{index}.tsv"
        out = workdir / f"h2load-{index}.out"
        with out.open("wb") as sink:
            process = subprocess.Popen(
                _command(spec, index, log),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        running.append((process, log, out))
    started = time.monotonic()
    if mark is not None:
        _sleep_until(started + spec.warmup_s + MARK_SLACK_S)
        mark()
        _sleep_until(started + spec.warmup_s + spec.duration_s)
        mark()
    deadline = time.monotonic() + spec.warmup_s + spec.duration_s + 60
    results = []
    for process, log, out in running:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = out.read_text(errors="replace")
        result = parse_summary(text)
        result.latencies_us = read_log(log) if log.exists() else []
        results.append(result)
        log.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    return results


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence; NaN when it is empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass
class LoadResult:
    calls: int
    errors: int
    seconds: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    rounds: int
    processes: int


def summarize(rounds: Sequence[tuple[Round, list[ProcessResult]]]) -> LoadResult:
    calls = errors = 0
    seconds = 0.0
    latencies: list[int] = []
    for spec, results in rounds:
        seconds += spec.duration_s
        for result in results:
            calls += result.succeeded
            errors += result.failed + result.errored + result.timeout + result.non_2xx
            latencies.extend(result.latencies_us)
    latencies.sort()
    return LoadResult(
        calls=calls,
        errors=errors,
        seconds=seconds,
        calls_per_s=calls / seconds if seconds else 0.0,
        p50_ms=percentile(latencies, 0.50) / 1000,
        p99_ms=percentile(latencies, 0.99) / 1000,
        p999_ms=percentile(latencies, 0.999) / 1000,
        max_ms=(latencies[-1] / 1000) if latencies else math.nan,
        rounds=len(rounds),
        processes=rounds[0][0].shape.processes if rounds else 0,
    )
