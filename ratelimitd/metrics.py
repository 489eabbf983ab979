"""Every Prometheus metric in one place. Label values are bounded: never raw request values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter(
    "ratelimitd_decisions",
    "Descriptor decisions made, by the backend that counted them.",
    ["backend"],
    registry=REGISTRY,
)
BACKEND_ROUND_TRIPS = Counter(
    "ratelimitd_backend_round_trips",
    "Round trips to the counter store (one pipeline is one round trip per node).",
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
LOCAL_CACHE_HITS = Counter(
    "ratelimitd_local_cache_hits",
    "Decisions answered OVER_LIMIT from the local over-limit cache without a round trip.",
    registry=REGISTRY,
)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
