"""Calendar windows: days, weeks (Monday to Monday), months and years as the wall clock of
one IANA time zone shows them, with true month lengths and DST.

A window is known by its index (the local date's ordinal for a day, Mondays counted for a
week, `year * 12 + month - 1` for a month, the year for a year), so two instants fall in the
same window exactly when their indexes match, and the number of windows between two of them
is the difference. A window starts at local midnight of its first day; where DST skips
midnight, at the first instant of that day.

Redis's Lua has no time-zone data, so the Redis backend sends a `Span` (three consecutive
windows around the service's clock) with each call, and the script picks the one that holds
*Redis's* time. The Python twin (the memory backend) picks from the same span the same way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

from ratelimitd.model import Unit

CALENDAR_UNITS = (Unit.DAY, Unit.WEEK, Unit.MONTH, Unit.YEAR)
DAY = 86400


@dataclass(frozen=True, slots=True)
class Span:
    """Windows `first`, `first + 1` and `first + 2`: window `first + i` runs from
    `bounds[i]` to `bounds[i + 1]`. `period` (the unit's nominal length) stands in for the
    lengths of windows past the last one known."""

    period: int
    first: int
    bounds: tuple[float, float, float, float]

    def locate(self, now: float) -> tuple[int, float]:
        """The index of the window that holds `now`, and when it ends. An instant outside the
        span (a clock a whole window off) counts in the nearest window."""
        bounds = self.bounds
        for offset in (0, 1):
            if now < bounds[offset + 1]:
                return self.first + offset, bounds[offset + 1]
        return self.first + 2, bounds[3]

    def end_of(self, index: int) -> float:
        """When window `index` ends (past the span, in nominal periods: a wait reported for a
        debt that outlasts the next window is that close)."""
        offset = min(max(index - self.first, 0), 2)
        return self.bounds[offset + 1] + (index - self.first - offset) * self.period

    def kept_until(self, index: int) -> float:
        """No earlier than the end of window `index`: past the span, a day longer per window
        than the nominal length, which covers 31-day months, leap years and DST."""
        offset = min(max(index - self.first, 0), 2)
        return self.bounds[offset + 1] + (index - self.first - offset) * (self.period + DAY)

    def as_argument(self) -> str:
        """What the Lua twin parses (prelude.lua `calendar_span`)."""
        return ",".join([str(self.period), str(self.first), *map(repr, self.bounds)])


def zone(name: str) -> ZoneInfo:
    """The zone named `name`; raises `ValueError` for a name it does not know."""
    try:
        return ZoneInfo(name)
    except (ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError...
        raise ValueError(str(exc)) from exc
    except KeyError as exc:
        raise ValueError(f"no time zone named {name!r}") from exc


def index_at(now: float, unit: Unit, time_zone: str) -> int:
    """The index of the window that holds `now`."""
    local = dt.datetime.fromtimestamp(now, zone(time_zone)).date()
    if unit is Unit.DAY:
        return local.toordinal()
    if unit is Unit.WEEK:
        return (local.toordinal() - 1) // 7  # day 1 (0001-01-01) was a Monday
    if unit is Unit.MONTH:
        return local.year * 12 + local.month - 1
    if unit is Unit.YEAR:
        return local.year
    raise ValueError(f"{unit.name.lower()} is not a calendar unit")


@lru_cache(maxsize=4096)
def start_of(index: int, unit: Unit, time_zone: str) -> float:
    """When window `index` starts: local midnight of its first day, as a Unix time."""
    if unit is Unit.DAY:
        first_day = dt.date.fromordinal(index)
    elif unit is Unit.WEEK:
        first_day = dt.date.fromordinal(index * 7 + 1)
    elif unit is Unit.MONTH:
        first_day = dt.date(index // 12, index % 12 + 1, 1)
    else:
        first_day = dt.date(index, 1, 1)
    # fold=0: a midnight that happens twice counts from its first time; one that DST skips
    # maps to the instant of the jump, the first of that day.
    return dt.datetime.combine(first_day, dt.time(0), tzinfo=zone(time_zone)).timestamp()


_spans: dict[tuple[Unit, str], Span] = {}


def span_at(now: float, unit: Unit, time_zone: str) -> Span:
    """The windows before, at and after `now`'s (reused while `now` stays in the middle one)."""
    cached = _spans.get((unit, time_zone))
    if cached is not None and cached.bounds[1] <= now < cached.bounds[2]:
        return cached
    index = index_at(now, unit, time_zone)
    bounds = tuple(start_of(index + offset, unit, time_zone) for offset in (-1, 0, 1, 2))
    span = Span(unit.seconds, index - 1, bounds)  # type: ignore[arg-type]
    if len(_spans) > 1024:
        _spans.clear()
    _spans[(unit, time_zone)] = span
    return span
