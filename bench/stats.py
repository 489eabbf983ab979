"""Counters read before and after each load point: Redis INFO commandstats, /metrics."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Mapping, Sequence

import redis
from prometheus_client.parser import text_string_to_metric_families

Counters = dict[str, float]


def redis_commandstats(addresses: Sequence[tuple[str, int]]) -> Counters:
    """Calls per command, summed over `addresses` (every master of a Cluster), plus `_total`."""
    totals: Counters = {}
    for host, port in addresses:
        client = redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            info = client.info("commandstats")
        finally:
            client.close()
        for name, fields in info.items():
            command = name.removeprefix("cmdstat_")
            calls = float(fields["calls"]) if isinstance(fields, dict) else 0.0
            totals[command] = totals.get(command, 0.0) + calls
            totals["_total"] = totals.get("_total", 0.0) + calls
    return totals


def redis_pids(addresses: Sequence[tuple[str, int]]) -> list[int]:
    pids = []
    for host, port in addresses:
        client = redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            pids.append(int(client.info("server")["process_id"]))
        finally:
            client.close()
    return pids


def flush(addresses: Sequence[tuple[str, int]]) -> None:
    for host, port in addresses:
        client = redis.Redis(host=host, port=port, socket_timeout=30)
        try:
            client.flushall()
        finally:
            client.close()


def scrape_metrics(url: str) -> Counters:
    """Every sample of a Prometheus endpoint, as `name{label="v",...}` -> value.

    Counter samples keep their `_total` name; an unreachable endpoint gives {}.
    """
    for attempt in range(3):  # a busy worker may drop one scrape; a missing window is worse
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
            break
        except OSError:
            if attempt == 2:
                return {}
            time.sleep(0.1)
    samples: Counters = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return samples


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels`; None when there are none."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    found = None
    prefix = name + "{"
    for key, value in samples.items():
        if key.startswith(prefix) and all(w in key for w in wanted):
            found = (found or 0.0) + value
    return found


def delta(
    before: Mapping[str, float], after: Mapping[str, float], name: str, **labels: str
) -> float | None:
    end = metric_sum(after, name, **labels)
    if end is None:
        return None
    return end - (metric_sum(before, name, **labels) or 0.0)


def counter_delta(before: Mapping[str, float], after: Mapping[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)
