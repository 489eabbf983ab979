"""Scenario tables per algorithm, run on every backend with a fake clock.

Each row is (seconds after T0, cost, expected code, remaining, seconds until reset), worked out
by hand from the algorithm's definition in docs/algorithms.md. Redis reports the reset in whole
milliseconds (rounded up), hence the tolerance.
"""

from __future__ import annotations

import asyncio

import pytest

from ratelimitd.backends.base import Backend
from ratelimitd.clock import FakeClock
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.model import Code, Descriptor, Request
from tests.helpers import config

OK, OVER = Code.OK, Code.OVER_LIMIT
T0 = 1_700_000_100.0  # a minute boundary

RULES = """
domain: algo
descriptors:
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20}
  - key: tiered
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 2}
      - {name: daily, unit: day, requests_per_unit: 5}
  - key: smooth_tiered
    rate_limits:
      - {name: per_second, unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20}
      - {name: per_day, unit: day, requests_per_unit: 10000}
  - key: gcra
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: gcra, burst: 20}
  - key: first_hit
    rate_limit: {unit: minute, requests_per_unit: 3, window: first_hit}
  - key: first_hit_debt
    rate_limit: {unit: minute, requests_per_unit: 10, window: first_hit, charge: always}
  - key: fixed_debt
    rate_limit: {unit: minute, requests_per_unit: 10, charge: always}
  - key: sliding_debt
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: sliding_window, charge: always}
  - key: bucket_debt
    rate_limit:
      {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20, charge: always}
"""

Row = tuple[float, int, Code, int, float]

FIXED: list[Row] = [
    (0, 1, OK, 2, 60),
    (10, 2, OK, 0, 50),
    (20, 1, OVER, 0, 40),
    (30, 0, OVER, 0, 30),  # a probe when nothing is left
    (60, 3, OK, 0, 60),  # the next window
    (61, 4, OVER, 0, 59),
    (120, 4, OVER, 3, 60),  # a cost above the limit is never admitted
    (121, 0, OK, 3, 59),  # a probe consumes nothing
]

SLIDING: list[Row] = [
    (0, 6, OK, 4, 120),  # restored when this window has slid out entirely
    (30, 4, OK, 0, 90),
    (45, 1, OVER, 0, 21),  # 10 x (1 - f) <= 9 in the next window: f = 0.1, at 66 s
    (60, 1, OVER, 0, 6),  # the previous 10 still weigh 10 x (1 - 0/60)
    (66.5, 1, OK, 0, 113.5),  # 10 x (1 - 6.5/60) + 1 = 9.92
    (90, 1, OK, 3, 90),  # 10 x 0.5 + 2 = 7
    (130, 0, OK, 8, 50),  # previous 2 x (1 - 10/60) = 1.67: restored at the window end
    (200, 11, OVER, 10, 0),  # a cost above the limit is never admitted
]

BUCKET: list[Row] = [
    (0, 20, OK, 0, 2.0),  # the whole burst at once; full again after 20 / 10 s
    (0, 1, OVER, 0, 0.1),  # one token back after 0.1 s
    (0.5, 5, OK, 0, 2.0),
    (0.5, 3, OVER, 0, 0.3),
    (1.0, 0, OK, 5, 1.5),  # a probe sees 5 tokens
    (3.0, 21, OVER, 20, 0.0),  # above the burst: never admitted
    (3.0, 15, OK, 5, 1.5),
]


# GCRA at the bucket's rate and burst admits what the bucket does, with the same waits: one
# timestamp, 0.1 s per hit, up to 2 s ahead.
GCRA = BUCKET

# `window: first_hit`: the window opens at the first admitted hit and lasts the period.
FIRST_HIT: list[Row] = [
    (5, 0, OK, 3, 0),  # a probe opens no window: nothing is held
    (5, 4, OVER, 3, 0),  # nor does a cost that never fits
    (10, 1, OK, 2, 60),  # the window: 10 s to 70 s
    (20, 2, OK, 0, 50),
    (30, 1, OVER, 0, 40),
    (69, 0, OVER, 0, 1),
    (70, 1, OK, 2, 60),  # the next window opens at this hit: 70 s to 130 s
    (129.5, 2, OK, 0, 0.5),
    (200, 0, OK, 3, 0),  # long after: no window
]

FIRST_HIT_DEBT: list[Row] = [
    (10, 25, OK, 0, 120),  # 25: 15 owed at 70 s, 5 at 130 s: the next hit fits then
    (80, 0, OVER, 0, 50),  # the debt chained the window on at 70 s
    (130, 1, OK, 4, 60),  # 5 carried into the window from 130 s, plus 1
]

# `charge: always`: admitted while one unit is left, charged in full whatever the answer (a
# debt), paid off as docs/algorithms.md says. Limit 10 a minute (10 tokens a second, burst 20).
FIXED_DEBT: list[Row] = [
    (0, 4, OK, 6, 60),
    (10, 25, OK, 0, 110),  # count 29: 19 after the first window end, 9 after the second
    (20, 0, OVER, 0, 100),  # a probe is charged nothing
    (30, 5, OVER, 0, 150),  # denied, and charged all the same: 34 -> 24, 14, 4 at 180 s
    (60, 0, OVER, 0, 120),  # 24 carried into this window
    (180, 1, OK, 5, 60),  # 4 carried, plus 1
    (181, 0, OK, 5, 59),
]

SLIDING_DEBT: list[Row] = [
    (0, 4, OK, 6, 120),
    (30, 25, OK, 0, 210),  # 29: previous 10 + 19, then 10 + 9, then 9 + 0, then 0 at 240 s
    (45, 0, OVER, 0, 135),  # 10 x (1 - f) + 9 <= 9 at the end of the third window (180 s)
    (60, 0, OVER, 0, 120),  # 10 x 1 + 19 = 29
    (180, 1, OK, 0, 120),  # previous 9, current 0: 9 + 1 fits
    (210, 0, OK, 4, 90),  # 9 x 0.5 + 1 = 5.5
]

BUCKET_DEBT: list[Row] = [
    (0, 25, OK, 0, 2.5),  # 20 tokens, then -5: full again after 25 / 10 s
    (0, 0, OVER, 0, 0.6),  # one token after 0.6 s
    (0.3, 3, OVER, 0, 0.6),  # -2 tokens: denied, and charged: -5 again
    (0.9, 0, OK, 1, 1.9),
    (1.0, 10, OK, 0, 2.8),  # 2 tokens, then -8
    (4.0, 0, OK, 20, 0.0),  # full (20 tokens) from 3.8 s
]


@pytest.fixture
def limiter(backend: Backend, key_prefix: str) -> Limiter:
    return Limiter(config(RULES), backend, LimiterOptions(key_prefix=key_prefix))


def hit(key: str, cost: int, value: str = "v") -> Request:
    return Request("algo", (Descriptor(((key, value),), hits_addend=cost),))


@pytest.mark.parametrize(
    ("key", "rows"),
    [
        ("fixed", FIXED),
        ("sliding", SLIDING),
        ("bucket", BUCKET),
        ("gcra", GCRA),
        ("first_hit", FIRST_HIT),
        ("first_hit_debt", FIRST_HIT_DEBT),
        ("fixed_debt", FIXED_DEBT),
        ("sliding_debt", SLIDING_DEBT),
        ("bucket_debt", BUCKET_DEBT),
    ],
)
async def test_scenario(limiter: Limiter, clock: FakeClock, key: str, rows: list[Row]) -> None:
    for at, cost, code, remaining, reset in rows:
        clock.set(T0 + at)
        status = (await limiter.should_rate_limit(hit(key, cost))).statuses[0]
        got = (status.code, status.remaining, status.reset_after)
        assert got == (code, remaining, pytest.approx(reset, abs=0.0011)), f"row {at}, {cost}"


async def test_several_limits_all_must_pass(limiter: Limiter, clock: FakeClock) -> None:
    clock.set(T0)
    codes = [(await limiter.should_rate_limit(hit("tiered", 1))).overall for _ in range(10)]
    assert codes == [OK, OK] + [OVER] * 8
    clock.set(T0 + 1)
    codes = [(await limiter.should_rate_limit(hit("tiered", 1))).overall for _ in range(10)]
    # the 8 denied hits of the first second did not burn the daily quota of 5
    assert codes == [OK, OK] + [OVER] * 8
    clock.set(T0 + 2)
    decision = await limiter.should_rate_limit(hit("tiered", 1))
    assert decision.overall is OK
    status = decision.statuses[0]
    assert status.limit is not None and status.limit.name == "daily"  # least remaining: 0 of 5
    clock.set(T0 + 3)
    status = (await limiter.should_rate_limit(hit("tiered", 1))).statuses[0]
    assert status.code is OVER
    assert status.limit is not None and status.limit.name == "daily"  # the denying one
    day_end = (T0 // 86400 + 1) * 86400
    assert status.reset_after == pytest.approx(day_end - (T0 + 3), abs=0.0011)


async def test_the_most_restrictive_limit_is_reported(limiter: Limiter, clock: FakeClock) -> None:
    clock.set(T0)
    status = (await limiter.should_rate_limit(hit("tiered", 1))).statuses[0]
    assert status.limit is not None and status.limit.name == "burst" and status.remaining == 1
    status = (await limiter.should_rate_limit(hit("smooth_tiered", 20))).statuses[0]
    assert status.limit is not None and status.limit.name == "per_second" and status.remaining == 0
    status = (await limiter.should_rate_limit(hit("smooth_tiered", 1))).statuses[0]
    assert status.code is OVER and status.reset_after == pytest.approx(0.1, abs=0.0011)


@pytest.mark.parametrize(("key", "admitted"), [("fixed", 3), ("sliding", 10), ("bucket", 20)])
async def test_concurrent_hits_admit_exactly_the_promise(
    limiter: Limiter, clock: FakeClock, key: str, admitted: int
) -> None:
    clock.set(T0 + 1)
    decisions = await asyncio.gather(
        *(limiter.should_rate_limit(hit(key, 1, "c")) for _ in range(200))
    )
    assert sum(decision.overall is OK for decision in decisions) == admitted
