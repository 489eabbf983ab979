"""Fixed window: at most `requests_per_unit` per window aligned to the epoch or, with
`window: first_hit`, per window that starts at a key's first admitted hit.

With `calendar: true` the windows are calendar days, weeks, months or years in a time zone
(`calendar_step`), and the state holds the window's index instead of its start.

Under `charge: always` the count may pass the limit (a debt): each window end then pays off
one window's worth (`requests_per_unit`), so a debt of D delays the next admission by about
D / requests_per_unit windows. Without a debt every window starts at zero.
"""

from __future__ import annotations

import math

from ratelimitd import calendar_windows
from ratelimitd.algorithms.base import Outcome, State
from ratelimitd.calendar_windows import Span
from ratelimitd.model import Charge, Limit, LimitResult, Window


def step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    if limit.window is Window.FIRST_HIT:
        return first_hit_step(state, now, limit, cost)
    if limit.time_zone is not None:
        span = calendar_windows.span_at(now, limit.unit, limit.time_zone)
        return calendar_step(span, state, now, limit, cost)
    period = limit.period
    window = now - now % period
    capacity = limit.requests_per_unit
    if state is not None and state[0] == window:  # the usual case: this window's count
        count = int(state[1])
    else:
        count = _carried(state, window, period, capacity)
    allowed, count = _charge(limit, count, cost)
    if count <= capacity:  # no debt (the usual case): the window's end frees it, ends the key
        window_end = window + period
        return Outcome(
            (window, count), LimitResult(allowed, capacity - count, window_end - now), window_end
        )
    return _in_debt(window, count, allowed, now, limit)


def first_hit_step(state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    """The window is the period from a key's first admitted hit; state (start, count). A
    debt past a window's end chains the next window on at that end, with the rest of it."""
    period, capacity = limit.period, limit.requests_per_unit
    start: float | None = None
    count = 0
    if state is not None:
        start, count = state[0], int(state[1])
        if now >= start + period:  # ended: what is left of a debt opens the next window
            ends = math.floor((now - start) / period)
            count = max(count - ends * capacity, 0)
            start = start + ends * period if count else None
    allowed, count = _charge(limit, count, cost)
    if start is None:
        if not (count and cost):  # nothing charged: no window (a probe, or a cost never fitting)
            return Outcome((now, 0), LimitResult(allowed, capacity - count, 0.0), now)
        start = now  # the first admitted hit opens the window
    if count <= capacity:
        window_end = start + period
        return Outcome(
            (start, count), LimitResult(allowed, capacity - count, window_end - now), window_end
        )
    return _in_debt(start, count, allowed, now, limit)


def calendar_step(span: Span, state: State | None, now: float, limit: Limit, cost: int) -> Outcome:
    """A calendar window from `span` (the twin of `fixed_window_calendar` in the Lua, which
    gets the same span and picks by Redis's clock); state (window index, count). A debt pays
    off one limit's worth per window end, as on the epoch's grid."""
    capacity = limit.requests_per_unit
    index, window_end = span.locate(now)
    count = _carried(state, index, 1, capacity)  # windows counted by index: one apart each
    allowed, count = _charge(limit, count, cost)
    if count <= capacity:
        return Outcome(
            (index, count), LimitResult(allowed, capacity - count, window_end - now), window_end
        )
    admits_in = max(1, math.ceil((count + 1 - capacity) / capacity))
    paid_in = math.ceil(count / capacity)
    return Outcome(
        (index, count),
        LimitResult(allowed, 0, span.end_of(index + admits_in - 1) - now),
        span.kept_until(index + paid_in - 1),
    )


def _charge(limit: Limit, count: int, cost: int) -> tuple[bool, int]:
    """Whether the hit is admitted, and the count it leaves (if committed)."""
    capacity = limit.requests_per_unit
    if limit.charge is Charge.ALWAYS and cost > 0:
        # room for one unit: then all of it, past the limit if need be
        return count < capacity, count + cost
    allowed = count < capacity if cost == 0 else count + cost <= capacity
    return allowed, count + cost if allowed else count


def _in_debt(window: float, count: int, allowed: bool, now: float, limit: Limit) -> Outcome:
    """A count past the limit: the window ends until one unit fits again, and until nothing
    is owed (when the key can go)."""
    period, capacity = limit.period, limit.requests_per_unit
    window_end = window + period
    per_window = capacity or 1  # (a debt needs a limit of 1 at least: the config says so)
    admits_in = max(1, math.ceil((count + 1 - capacity) / per_window))
    paid_in = math.ceil(count / per_window)
    return Outcome(
        (window, count),
        LimitResult(allowed, 0, window_end + (admits_in - 1) * period - now),
        window + paid_in * period,
    )


def _carried(state: State | None, window: float, period: int, capacity: int) -> int:
    """The count at the start of `window`: what is left of a debt after the window ends since."""
    if state is None:
        return 0
    ends = round((window - state[0]) / period)
    if ends == 0:
        return int(state[1])
    return max(int(state[1]) - ends * capacity, 0) if ends > 0 else 0


def refund(
    state: State | None, now: float, limit: Limit, amount: int, charged_at: float
) -> State | None:
    """Gives `amount` back to the window that was charged at `charged_at`, if it is still the
    current one (a refund never reaches a later window); None when there is nothing to do."""
    if state is None:
        return None
    period = limit.period
    if limit.time_zone is not None:
        span = calendar_windows.span_at(now, limit.unit, limit.time_zone)
        index = span.locate(now)[0]
        if state[0] != index or span.locate(charged_at)[0] != index:
            return None
        return (index, max(int(state[1]) - amount, 0))
    if limit.window is Window.FIRST_HIT:
        start = state[0]
        if not start <= charged_at < start + period or now >= start + period:
            return None
        return (start, max(int(state[1]) - amount, 0))
    window = now - now % period
    if state[0] != window or charged_at - charged_at % period != window:
        return None
    return (window, max(int(state[1]) - amount, 0))
