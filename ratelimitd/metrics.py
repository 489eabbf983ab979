"""Every Prometheus metric in one place, with a `ratelimitd_` prefix.

Label values are bounded: rules are labelled by their configured path, never by a request
value, except `detailed_metric` rules, whose values are capped per rule (`RuleMetrics`).
With `--workers`, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) sums the
workers' values at `/metrics`.
"""

from __future__ import annotations

import os
import weakref
from bisect import bisect_left
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ratelimitd.logs import hashed
from ratelimitd.model import Rule

REGISTRY = CollectorRegistry(auto_describe=True)
RULE_LABELS = ["domain", "rule"]

TOTAL_HITS = Counter(
    "ratelimitd_total_hits", "Hits asked for, per rule.", RULE_LABELS, registry=REGISTRY
)
OVER_LIMIT = Counter(
    "ratelimitd_over_limit", "Hits over the limit, per rule.", RULE_LABELS, registry=REGISTRY
)
NEAR_LIMIT = Counter(
    "ratelimitd_near_limit",
    "Hits admitted above RATELIMITD_NEAR_LIMIT_RATIO of the limit, per rule.",
    RULE_LABELS,
    registry=REGISTRY,
)
WITHIN_LIMIT = Counter(
    "ratelimitd_within_limit", "Hits admitted, per rule.", RULE_LABELS, registry=REGISTRY
)
SHADOW_MODE = Counter(
    "ratelimitd_shadow_mode",
    "Hits over the limit that shadow mode let through, per rule.",
    RULE_LABELS,
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "ratelimitd_request_duration_seconds",
    "Time to answer one call, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
BACKEND_LATENCY = Histogram(
    "ratelimitd_backend_duration_seconds",
    "Time of one round trip to the counter store.",
    ["backend"],
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
BACKEND_BATCH_SIZE = Histogram(
    "ratelimitd_backend_decisions_per_round_trip",
    "Descriptor decisions sent in one round trip.",
    ["backend"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
DECISIONS = Counter(
    "ratelimitd_decisions",
    "Descriptor decisions made, by the backend that counted them.",
    ["backend"],
    registry=REGISTRY,
)
BACKEND_ROUND_TRIPS = Counter(
    "ratelimitd_backend_round_trips",
    "Round trips to the counter store.",
    ["backend"],
    registry=REGISTRY,
)
BACKEND_COMMANDS = Counter(
    "ratelimitd_backend_commands",
    "Script calls sent to the counter store.",
    ["backend"],
    registry=REGISTRY,
)
BACKEND_ERRORS = Counter(
    "ratelimitd_backend_errors",
    "Counter store failures, by kind (timeout, connection, script).",
    ["backend", "kind"],
    registry=REGISTRY,
)
H2_LIMITED = Counter(
    "ratelimitd_h2_limited",
    "HTTP/2 clients stopped by a limit (transport/h2/limits.py), by limit.",
    ["limit"],
    registry=REGISTRY,
)
LOCAL_CACHE_HITS = Counter(
    "ratelimitd_local_cache_hits",
    "Decisions answered OVER_LIMIT from the local over-limit cache without a round trip.",
    registry=REGISTRY,
)
CONFIG_LOADS = Counter(
    "ratelimitd_config_loads", "Config loads and reloads, by result.", ["result"], registry=REGISTRY
)
CONFIG_INFO = Gauge(
    "ratelimitd_config_info",
    "The loaded config: 1 for its content hash.",
    ["hash"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
DETAILED_OTHER = "_other_"
MAX_DETAIL_LENGTH = 64


class Tally:
    """Increments of one counter series, added up in a plain int until `flush_tallies()`.

    prometheus-client takes a lock (or, with `--workers`, writes a shared file) on every
    increment; the hot path counts several things per decision, so it counts here and the
    sums reach prometheus-client at every scrape of this process (`exposition`) and every
    second (`App` flushes them, for the scrapes that other worker processes serve).
    """

    __slots__ = ("__weakref__", "child", "pending")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.pending = 0
        _TALLIES.add(self)

    def inc(self, amount: int = 1) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0
            self.child.inc(pending)


class HistogramTally:
    """Observations of one histogram series, counted per bucket in plain ints until
    `flush_tallies()`, like `Tally`: prometheus-client's `observe` takes a lock and walks the
    buckets on every call, and every call observes its latency.

    Flushing adds the counts to the series' own buckets and sum (prometheus-client's
    `_buckets`, `_sum`, `_upper_bounds`, unchanged since its 0.4); tests/unit/test_metrics_tally.py
    checks that the result equals `observe`'s."""

    __slots__ = ("__weakref__", "bounds", "child", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)  # the last one is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        _TALLIES.add(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.total += value

    def flush(self) -> None:
        counts = self.counts
        if any(counts):
            total, self.counts, self.total = self.total, [0] * len(counts), 0.0
            for bucket, count in zip(self.child._buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
            self.child._sum.inc(total)


_TALLIES: weakref.WeakSet[Tally | HistogramTally] = weakref.WeakSet()


def flush_tallies() -> None:
    for tally in list(_TALLIES):
        tally.flush()


# prometheus-client chooses its multiprocess mode from this variable when it is imported.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_config_hashes: list[str] = []


def set_config_hash(content_hash: str) -> None:
    """`ratelimitd_config_info{hash}` is 1 for the loaded config, and the series of the one
    before goes: removed, or set to 0 in multiprocess mode, which cannot remove series."""
    for previous in _config_hashes:
        if previous != content_hash:
            if MULTIPROCESS:
                CONFIG_INFO.labels(previous).set(0)
            else:
                CONFIG_INFO.remove(previous)
    _config_hashes[:] = [content_hash]
    CONFIG_INFO.labels(content_hash).set(1)


@dataclass(slots=True)
class RuleCounters:
    """The counters of one rule (or one value of a `detailed_metric` rule)."""

    total: Tally
    over: Tally
    near: Tally
    within: Tally
    shadow: Tally
    near_ratio: float

    def record(self, cost: int, capacity: int, remaining: int, over: bool, shadow: bool) -> None:
        self.total.pending += cost  # Tally.inc, inlined: this runs for every descriptor
        if over:
            self.over.pending += cost
            if shadow:
                self.shadow.pending += cost
        else:
            self.within.pending += cost
            if capacity - remaining > capacity * self.near_ratio:
                self.near.pending += cost


class RuleMetrics:
    """The labelled counters of each rule, made once and reused on every hit.

    A `detailed_metric` rule gets one series per request value, up to `max_values` per rule;
    later values share the series `rule_other_`, and values longer than `MAX_DETAIL_LENGTH`
    are shortened to a prefix and a digest, so no request can blow up /metrics.
    """

    def __init__(self, near_ratio: float = 0.8, max_values: int = 100) -> None:
        self.near_ratio = near_ratio
        self.max_values = max_values
        self._children: dict[tuple[str, str], RuleCounters] = {}
        self._values_seen: dict[tuple[str, str], set[str]] = {}

    def counters(self, rule: Rule, detail: str) -> RuleCounters:
        """The counters `rule` counts in; `detail`, the request's values, for a
        `detailed_metric` rule. A caller may keep them for as long as the rule is current."""
        path = rule.path
        if rule.detailed_metric:
            if len(detail) > MAX_DETAIL_LENGTH:  # long values: a prefix and a digest
                detail = f"{detail[: MAX_DETAIL_LENGTH - 13]}_{hashed(detail)}"
            seen = self._values_seen.setdefault((rule.domain, rule.path), set())
            if detail not in seen and len(seen) >= self.max_values:
                detail = DETAILED_OTHER
            else:
                seen.add(detail)
            path = f"{rule.path}_{detail}"
        key = (rule.domain, path)
        children = self._children.get(key)
        if children is None:
            labels = (rule.domain, path)
            children = self._children[key] = RuleCounters(
                Tally(TOTAL_HITS.labels(*labels)),
                Tally(OVER_LIMIT.labels(*labels)),
                Tally(NEAR_LIMIT.labels(*labels)),
                Tally(WITHIN_LIMIT.labels(*labels)),
                Tally(SHADOW_MODE.labels(*labels)),
                self.near_ratio,
            )
        return children


def exposition() -> bytes:
    """The text format; summed over worker processes in multiprocess mode."""
    flush_tallies()
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
