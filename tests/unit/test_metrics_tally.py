"""Tallies: counts kept in plain numbers reach prometheus-client exactly as direct calls would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ratelimitd.metrics import HistogramTally, Tally, flush_tallies

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0)


def _exposition(registry: CollectorRegistry, name: str) -> list[str]:
    return [
        line.replace(name, "x")
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(name) and "_created" not in line
    ]


@given(
    st.lists(
        st.one_of(
            st.sampled_from(BUCKETS),  # on a bound: counted in that bucket, not the next
            st.floats(min_value=0, max_value=5, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_a_histogram_tally_flushes_what_observe_would_have_counted(values: list[float]) -> None:
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ["m"], buckets=BUCKETS, registry=direct_registry)
    tallied = Histogram("tallied_seconds", "t", ["m"], buckets=BUCKETS, registry=tallied_registry)
    tally = HistogramTally(tallied.labels("a"))
    for value in values:
        direct.labels("a").observe(value)
        tally.observe(value)
    flush_tallies()
    flush_tallies()  # a second flush adds nothing
    direct_lines = _exposition(direct_registry, "direct_seconds")
    tallied_lines = _exposition(tallied_registry, "tallied_seconds")
    if values:
        assert tallied_lines == direct_lines
    else:
        assert all(line.endswith(" 0.0") for line in tallied_lines)


def test_a_counter_tally_reaches_its_counter_at_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    tally = Tally(counter)
    tally.inc()
    tally.inc(4)
    assert registry.get_sample_value("c_total") == 0.0  # not yet
    flush_tallies()
    assert registry.get_sample_value("c_total") == 5.0
