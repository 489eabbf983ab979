"""Issue 9's floors, each computed from one run's figures (ratios within that run).

A floor holds only if it holds for every descriptor count (and FastAPI concurrency) swept;
it is N/A when the run did not measure what it needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

THROUGHPUT_RATIO = 0.8
ROUND_TRIPS_PER_DECISION = 0.25
ROUND_TRIPS_CONCURRENCY = 64
HALF_PEAK_P99_MS = 10.0
MEMORY_KEYS = 1_000_000
MEMORY_RSS_MB = 300.0
FASTAPI_RATIO = 1.0


@dataclass
class Floor:
    name: str
    verdict: str = "N/A"  # PASS | FAIL | N/A
    figures: list[str] = field(default_factory=list)
    why: str = ""

    def judge(self, passed: list[bool]) -> Floor:
        if passed:
            self.verdict = "PASS" if all(passed) else "FAIL"
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Points = list[dict[str, Any]]


def _find(points: Points, target: str, load: str = "sweep", **where: int) -> list[dict[str, Any]]:
    return [
        p
        for p in points
        if p["target"] == target
        and p["load"] == load
        and all(p[key] == value for key, value in where.items())
    ]


def throughput(points: Points, descriptors: list[int]) -> Floor:
    floor = Floor(
        f"rl-redis >= {THROUGHPUT_RATIO}x baseline calls/s where the baseline peaks",
    )
    passed = []
    for d in descriptors:
        base = _find(points, "baseline", descriptors=d)
        if not base:
            continue
        peak = max(base, key=lambda p: p["calls_per_s"])
        ours = _find(points, "rl-redis", descriptors=d, concurrency=peak["concurrency"])
        if not ours:
            continue
        ratio = ours[0]["calls_per_s"] / peak["calls_per_s"]
        passed.append(ratio >= THROUGHPUT_RATIO)
        floor.figures.append(
            f"d={d}: baseline peaks at c={peak['concurrency']} with {peak['calls_per_s']:.0f}/s; "
            f"rl-redis {ours[0]['calls_per_s']:.0f}/s = {ratio:.2f}x" + _cpu_ratio(peak, ours[0])
        )
    floor.why = "" if passed else "needs the baseline and rl-redis targets"
    return floor.judge(passed)


def _cpu_ratio(base: dict[str, Any], ours: dict[str, Any]) -> str:
    """The same ratio from CPU per call (server + Redis), which a noisy neighbour disturbs
    less than calls/s: what the throughput ratio would be if CPU were the only limit."""
    base_cpu = base.get("cpu_s_per_1k")
    our_cpu = ours.get("cpu_s_per_1k")
    if not base_cpu or not our_cpu:
        return ""
    total = our_cpu + (ours.get("redis_cpu_s_per_1k") or 0.0)
    return f" (CPU per call: {base_cpu / our_cpu:.2f}x, {base_cpu / total:.2f}x with Redis's)"


def round_trips(points: Points, descriptors: list[int]) -> Floor:
    floor = Floor(
        f"rl-redis <= {ROUND_TRIPS_PER_DECISION} Redis round trips per decision at "
        f"{ROUND_TRIPS_CONCURRENCY} concurrent streams"
    )
    passed = []
    for d in descriptors:
        found = _find(points, "rl-redis", descriptors=d, concurrency=ROUND_TRIPS_CONCURRENCY)
        if not found or found[0]["round_trips_per_decision"] is None:
            continue
        value = found[0]["round_trips_per_decision"]
        passed.append(value <= ROUND_TRIPS_PER_DECISION)
        extra = found[0].get("evalsha_per_decision")
        floor.figures.append(
            f"d={d}: {value:.3f} round trips/decision"
            + (f", {extra:.2f} EVALSHA/decision (INFO)" if extra is not None else "")
        )
    floor.why = "" if passed else f"needs rl-redis at concurrency {ROUND_TRIPS_CONCURRENCY}"
    return floor.judge(passed)


def half_peak_latency(points: Points, descriptors: list[int]) -> Floor:
    floor = Floor(f"rl-redis p99 <= {HALF_PEAK_P99_MS:g} ms at half of its peak throughput")
    passed = []
    for d in descriptors:
        found = _find(points, "rl-redis", load="half-peak", descriptors=d)
        if not found:
            continue
        point = found[0]
        passed.append(point["p99_ms"] is not None and point["p99_ms"] <= HALF_PEAK_P99_MS)
        floor.figures.append(
            f"d={d}: {point['calls_per_s']:.0f} calls/s (c={point['concurrency']}, paced): "
            f"p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms, "
            f"p999 {point['p999_ms']:.2f} ms"
        )
    floor.why = "" if passed else "needs the half-peak load of rl-redis"
    return floor.judge(passed)


def memory(result: dict[str, Any] | None) -> Floor:
    floor = Floor(f"memory backend holds {MEMORY_KEYS:,} live keys in <= {MEMORY_RSS_MB:g} MB RSS")
    if result is None:
        floor.why = "not measured"
        return floor
    floor.figures.append(
        f"{result['live_keys']:,} live keys: RSS {result['rss_after_mb']:.0f} MB "
        f"(process before filling {result['rss_before_mb']:.0f} MB, "
        f"{result['bytes_per_key']:.0f} B/key)"
    )
    if result["live_keys"] < MEMORY_KEYS:
        floor.why = f"only {result['live_keys']:,} keys measured"
        return floor
    return floor.judge([result["rss_after_mb"] <= MEMORY_RSS_MB])


def fastapi(points: Points, skipped: dict[str, str]) -> Floor:
    floor = Floor(f"FastAPI + our middleware >= {FASTAPI_RATIO:g}x requests/s of FastAPI + slowapi")
    passed = []
    for slow in _find(points, "fastapi-slowapi"):
        ours = _find(points, "fastapi-ratelimitd", concurrency=slow["concurrency"])
        if not ours:
            continue
        ratio = ours[0]["calls_per_s"] / slow["calls_per_s"] if slow["calls_per_s"] else 0.0
        passed.append(ratio >= FASTAPI_RATIO)
        floor.figures.append(
            f"c={slow['concurrency']}: ours {ours[0]['calls_per_s']:.0f}/s vs slowapi "
            f"{slow['calls_per_s']:.0f}/s = {ratio:.2f}x"
        )
    floor.why = "" if passed else skipped.get("fastapi-ratelimitd", "not measured")
    return floor.judge(passed)


def evaluate(results: dict[str, Any]) -> list[Floor]:
    points: Points = results["points"]
    descriptors: list[int] = results["options"]["descriptors"]
    return [
        throughput(points, descriptors),
        round_trips(points, descriptors),
        half_peak_latency(points, descriptors),
        memory(results.get("memory")),
        fastapi(points, results.get("skipped", {})),
    ]


def lines(floor_dicts: list[dict[str, Any]]) -> list[str]:
    out = []
    for floor in floor_dicts:
        out.append(f"{floor['verdict']:<4}  {floor['name']}")
        out.extend(f"        {figure}" for figure in floor["figures"])
        if floor["why"]:
            out.append(f"        ({floor['why']})")
    return out
