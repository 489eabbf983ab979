"""Calendar windows on every backend, with a fake clock: month ends and DST (issue 21, item 3).

Each row is (instant, cost, expected code, remaining, seconds until reset), worked out by hand
from the wall clocks of the zones. Redis reports resets in whole milliseconds, hence the
tolerance.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.clock import FakeClock
from ratelimitd.config import load_config
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.model import Code, Descriptor, Request
from tests.helpers import config

OK, OVER = Code.OK, Code.OVER_LIMIT
HOUR, DAY = 3600, 86400

RULES = """
domain: cal
descriptors:
  - key: monthly_paris
    rate_limit: {unit: month, requests_per_unit: 3, calendar: true, time_zone: Europe/Paris}
  - key: daily_paris
    rate_limit: {unit: day, requests_per_unit: 2, calendar: true, time_zone: Europe/Paris}
  - key: monthly_tokens
    rate_limit: {unit: month, requests_per_unit: 1000, calendar: true, charge: always}
  - key: weekly_new_york
    rate_limit: {unit: week, requests_per_unit: 1, calendar: true, time_zone: America/New_York}
  - key: month_30_days
    rate_limit: {unit: month, requests_per_unit: 1}
"""

Row = tuple[str, int, Code, int, float]

# February 2027 in Paris ends at 2027-02-28T23:00Z; March has 31 days less the DST hour.
MONTHLY_PARIS: list[Row] = [
    ("2027-02-27T11:00:00Z", 2, OK, 1, DAY + 12 * HOUR),
    ("2027-02-28T22:59:59Z", 2, OVER, 1, 1),
    ("2027-02-28T23:00:00Z", 2, OK, 1, 31 * DAY - HOUR),  # 1 March in Paris
    ("2027-03-31T21:59:59Z", 2, OVER, 1, 1),  # 23:59:59 CEST
    ("2027-03-31T22:00:00Z", 3, OK, 0, 30 * DAY),  # April
]

# 29 March 2026 in Paris lasts 23 hours; 25 October 2026 lasts 25.
DAILY_PARIS: list[Row] = [
    ("2026-03-29T00:30:00Z", 1, OK, 1, 21 * HOUR + 30 * 60),
    ("2026-03-29T21:59:59Z", 1, OK, 0, 1),
    ("2026-03-29T21:59:59Z", 1, OVER, 0, 1),
    ("2026-03-29T22:00:00Z", 2, OK, 0, DAY),
    ("2026-10-24T22:00:00Z", 2, OK, 0, 25 * HOUR),  # midnight CEST, the long day
    ("2026-10-25T22:59:59Z", 1, OVER, 0, 1),
    ("2026-10-25T23:00:00Z", 1, OK, 1, DAY),
]

# charge: always on a calendar month (an LLM budget): a debt pays off 1000 per month end.
MONTHLY_TOKENS: list[Row] = [
    ("2027-01-31T23:00:00Z", 2500, OK, 0, HOUR + 28 * DAY),  # 1500 owed: fits again in March
    ("2027-02-01T00:00:00Z", 0, OVER, 0, 28 * DAY),  # 1500 carried into February
    ("2027-03-01T00:00:00Z", 1, OK, 499, 31 * DAY),  # 500 carried into March, plus 1
]

# Weeks run Monday to Monday on New York's wall clock; the fall-back week is an hour longer.
WEEKLY_NEW_YORK: list[Row] = [
    ("2026-10-26T03:59:59Z", 1, OK, 0, 1),  # Sunday 23:59:59 EDT
    ("2026-10-26T04:00:00Z", 1, OK, 0, 7 * DAY + HOUR),  # Monday 00:00 EDT
    ("2026-11-01T12:00:00Z", 1, OVER, 0, 17 * HOUR),  # Sunday 07:00 EST
    ("2026-11-02T05:00:00Z", 1, OK, 0, 7 * DAY),  # Monday 00:00 EST
]


def instant(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


@pytest.fixture
def limiter(backend: Backend, key_prefix: str) -> Limiter:
    return Limiter(config(RULES), backend, LimiterOptions(key_prefix=key_prefix))


def hit(key: str, cost: int) -> Request:
    return Request("cal", (Descriptor(((key, "v"),), hits_addend=cost),))


@pytest.mark.parametrize(
    ("key", "rows"),
    [
        ("monthly_paris", MONTHLY_PARIS),
        ("daily_paris", DAILY_PARIS),
        ("monthly_tokens", MONTHLY_TOKENS),
        ("weekly_new_york", WEEKLY_NEW_YORK),
    ],
)
async def test_scenario(limiter: Limiter, clock: FakeClock, key: str, rows: list[Row]) -> None:
    for when, cost, code, remaining, reset in rows:
        clock.set(instant(when))
        status = (await limiter.should_rate_limit(hit(key, cost))).statuses[0]
        got = (status.code, status.remaining, status.reset_after)
        assert got == (code, remaining, pytest.approx(reset, abs=0.0011)), f"row {when}, {cost}"


async def test_the_default_month_stays_upstreams_30_days(
    limiter: Limiter, clock: FakeClock
) -> None:
    now = instant("2027-02-27T11:00:00Z")
    clock.set(now)
    status = (await limiter.should_rate_limit(hit("month_30_days", 1))).statuses[0]
    assert status.code is OK
    assert status.reset_after == pytest.approx(30 * DAY - now % (30 * DAY), abs=0.0011)


async def test_the_api_tiers_example_sells_a_calendar_month(clock: FakeClock) -> None:
    """examples/api_tiers: a free key's 10,000 a month run out, and start again on the 1st."""
    tiers = load_config([Path(__file__).parents[2] / "examples" / "api_tiers" / "ratelimitd.yaml"])
    limiter = Limiter(tiers, MemoryBackend(clock))
    request = Request("api_tiers", (Descriptor((("tier", "free"), ("api_key", "k1"))),))
    clock.set(instant("2027-02-27T00:00:00Z"))
    for _ in range(10_000):  # 10 a second: the bucket's rate, so only the month can deny
        assert (await limiter.should_rate_limit(request)).overall is OK
        clock.advance(0.1)
    status = (await limiter.should_rate_limit(request)).statuses[0]
    assert status.code is OVER and status.limit is not None
    assert status.limit.name == "free_monthly"
    assert status.reset_after == pytest.approx(instant("2027-03-01T00:00:00Z") - clock.now())
    clock.set(instant("2027-03-01T00:00:00Z"))
    assert (await limiter.should_rate_limit(request)).overall is OK
