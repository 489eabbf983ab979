"""Calendar windows: true month lengths, weeks from Monday, DST (calendar_windows.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from ratelimitd.calendar_windows import Span, index_at, span_at, start_of
from ratelimitd.model import Unit

HOUR = 3600
DAY = 24 * HOUR


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def window_length(when: str, unit: Unit, zone: str) -> float:
    index = index_at(at(when), unit, zone)
    return start_of(index + 1, unit, zone) - start_of(index, unit, zone)


@pytest.mark.parametrize(
    ("when", "days"),
    [
        ("2027-01-15T12:00:00+00:00", 31),
        ("2027-02-15T12:00:00+00:00", 28),
        ("2028-02-15T12:00:00+00:00", 29),  # a leap year
        ("2100-02-15T12:00:00+00:00", 28),  # not one
        ("2027-04-15T12:00:00+00:00", 30),
        ("2027-12-31T23:59:59+00:00", 31),
    ],
)
def test_months_have_their_true_lengths(when: str, days: int) -> None:
    assert window_length(when, Unit.MONTH, "UTC") == days * DAY


@pytest.mark.parametrize(
    ("when", "zone", "hours"),
    [
        ("2026-03-29T12:00:00+02:00", "Europe/Paris", 23),  # spring forward
        ("2026-10-25T12:00:00+01:00", "Europe/Paris", 25),  # fall back
        ("2026-03-08T12:00:00-04:00", "America/New_York", 23),
        ("2026-11-01T12:00:00-05:00", "America/New_York", 25),
        ("2026-09-06T12:00:00-03:00", "America/Santiago", 23),  # DST skips midnight itself
        ("2026-10-04T12:00:00+11:00", "Australia/Lord_Howe", 23.5),  # a half-hour change
        ("2026-06-01T12:00:00+05:30", "Asia/Kolkata", 24),
    ],
)
def test_a_day_is_as_long_as_the_wall_clock_says(when: str, zone: str, hours: float) -> None:
    assert window_length(when, Unit.DAY, zone) == hours * HOUR


def test_a_day_that_dst_starts_at_midnight_starts_at_the_jump() -> None:
    # Santiago, 2026-09-06: the clocks go from 00:00 (-04) straight to 01:00 (-03) at 04:00 UTC
    index = index_at(at("2026-09-06T12:00:00-03:00"), Unit.DAY, "America/Santiago")
    assert start_of(index, Unit.DAY, "America/Santiago") == at("2026-09-06T04:00:00+00:00")


def test_windows_start_at_local_midnight() -> None:
    paris = "Europe/Paris"
    march = index_at(at("2027-03-10T00:00:00+00:00"), Unit.MONTH, paris)
    assert start_of(march, Unit.MONTH, paris) == at("2027-03-01T00:00:00+01:00")
    assert start_of(march + 1, Unit.MONTH, paris) == at("2027-04-01T00:00:00+02:00")
    # 23:30 UTC on 31 March is already April in Paris
    assert index_at(at("2027-03-31T22:30:00+00:00"), Unit.MONTH, paris) == march + 1
    year = index_at(at("2026-12-31T23:30:00+00:00"), Unit.YEAR, "Asia/Tokyo")
    assert year == 2027
    assert start_of(year, Unit.YEAR, "Asia/Tokyo") == at("2027-01-01T00:00:00+09:00")


def test_weeks_run_from_monday() -> None:
    zone = "America/New_York"
    sunday = index_at(at("2026-12-06T23:59:00-05:00"), Unit.WEEK, zone)
    monday = index_at(at("2026-12-07T00:00:00-05:00"), Unit.WEEK, zone)
    assert monday == sunday + 1
    assert start_of(monday, Unit.WEEK, zone) == at("2026-12-07T00:00:00-05:00")
    # the week of the fall-back Sunday is an hour longer
    fall = index_at(at("2026-10-28T12:00:00-04:00"), Unit.WEEK, zone)
    assert start_of(fall + 1, Unit.WEEK, zone) - start_of(fall, Unit.WEEK, zone) == 7 * DAY + HOUR


def test_a_span_locates_the_window_and_its_end() -> None:
    now = at("2027-02-27T12:00:00+01:00")
    span = span_at(now, Unit.MONTH, "Europe/Paris")
    february = index_at(now, Unit.MONTH, "Europe/Paris")
    assert span.first == february - 1
    assert span.locate(now) == (february, at("2027-03-01T00:00:00+01:00"))
    assert span.locate(at("2027-03-01T00:00:00+01:00")) == (february + 1, span.bounds[3])
    assert span.locate(span.bounds[0] - 1) == (february - 1, span.bounds[1])  # clamped
    assert span.locate(span.bounds[3] + 1) == (february + 1, span.bounds[3])  # clamped
    assert span.end_of(february + 2) == span.bounds[3] + 30 * DAY  # past the span: nominal
    assert span.kept_until(february + 2) == span.bounds[3] + 31 * DAY  # never short


def test_a_span_is_reused_within_its_middle_window_and_renewed_after() -> None:
    first = span_at(at("2027-05-10T00:00:00+00:00"), Unit.DAY, "UTC")
    assert span_at(at("2027-05-10T23:59:59+00:00"), Unit.DAY, "UTC") is first
    assert span_at(at("2027-05-11T00:00:00+00:00"), Unit.DAY, "UTC").first == first.first + 1


def test_the_span_argument_round_trips() -> None:
    span = span_at(at("2026-10-25T12:00:00+01:00"), Unit.DAY, "Europe/Paris")
    period, first, *bounds = span.as_argument().split(",")
    assert Span(int(period), int(first), tuple(map(float, bounds))) == span  # type: ignore[arg-type]
