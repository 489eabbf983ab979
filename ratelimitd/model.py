"""Frozen values shared by config, limiter and backends.

Nothing here knows about protobuf, YAML or Redis.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Unit(enum.Enum):
    """A rate-limit unit. Values are Envoy's `RateLimitResponse.RateLimit.Unit` numbers."""

    # Members are singletons compared by identity, so identity is their hash too: Enum's own
    # `__hash__` is a Python function, and units, algorithms and codes key dicts on every call.
    __hash__ = object.__hash__

    SECOND = 1
    MINUTE = 2
    HOUR = 3
    DAY = 4
    MONTH = 5
    YEAR = 6
    WEEK = 7

    @property
    def seconds(self) -> int:
        return _UNIT_SECONDS[self]

    @classmethod
    def parse(cls, text: str) -> Unit | None:
        """The unit named by `text`, case-insensitive, or None."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            return None


# Months and years are fixed lengths, as envoyproxy/ratelimit counts them.
_UNIT_SECONDS = {
    Unit.SECOND: 1,
    Unit.MINUTE: 60,
    Unit.HOUR: 3600,
    Unit.DAY: 86400,
    Unit.WEEK: 7 * 86400,
    Unit.MONTH: 30 * 86400,
    Unit.YEAR: 365 * 86400,
}


class Algorithm(enum.Enum):
    __hash__ = object.__hash__  # as Unit's
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"
    TOKEN_BUCKET = "token_bucket"
    GCRA = "gcra"  # the generic cell rate algorithm: one timestamp per key


# Short, stable codes for counter keys: a key is written for every hit, so it stays small.
_ALGORITHM_CODES = {
    Algorithm.FIXED_WINDOW: "fw",
    Algorithm.SLIDING_WINDOW: "sw",
    Algorithm.TOKEN_BUCKET: "tb",
    Algorithm.GCRA: "gc",
}


# What a decision answers when the backend (Redis) cannot: RATELIMITD_BACKEND_FAILURE for the
# service, `on_backend_failure` for one rule.
# `local`: counted in this process, at the limit divided by RATELIMITD_LOCAL_REPLICAS.
BACKEND_FAILURE_MODES = ("error", "allow", "deny", "local")


class Window(enum.Enum):
    """Where a fixed window starts: on the epoch's grid (`aligned`, upstream's way), or at
    the first admitted hit of a key (`first_hit`, what `INCR` then `EXPIRE` on the first
    attempt does: "5 tries, then wait until 15 minutes after the first")."""

    __hash__ = object.__hash__  # as Unit's

    ALIGNED = "aligned"
    FIRST_HIT = "first_hit"


class Charge(enum.Enum):
    """What a hit is charged when its cost does not fit what is left (docs/algorithms.md).

    `if_fits` (all or nothing): it is denied and charged nothing. `always` (a debt): a hit with
    room for one unit left is admitted, a hit with none is denied, and either is charged its
    whole cost, past the limit if need be; the window or bucket pays the debt off over time.
    For costs known only afterwards (tokens an LLM used), which must count in full.
    """

    __hash__ = object.__hash__  # as Unit's

    IF_FITS = "if_fits"
    ALWAYS = "always"


# Algorithms whose `burst` is how much may pass at once (default: requests_per_unit).
_BURSTY = frozenset((Algorithm.TOKEN_BUCKET, Algorithm.GCRA))


class Code(enum.Enum):
    """Values are Envoy's `RateLimitResponse.Code` numbers."""

    __hash__ = object.__hash__  # as Unit's

    OK = 1
    OVER_LIMIT = 2


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: `requests_per_unit` per `unit_multiplier` times `unit`."""

    requests_per_unit: int
    unit: Unit
    unit_multiplier: int = 1
    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    burst: int | None = None
    name: str = ""
    charge: Charge = Charge.IF_FITS
    window: Window = Window.ALIGNED  # fixed windows only
    # `calendar: true` (fixed windows only): the IANA zone whose calendar days, weeks, months
    # or years are the windows (calendar_windows.py); None: fixed lengths on the epoch's grid
    time_zone: str | None = None
    # Worked out once (every decision reads them): the window length, or full refill time, in
    # seconds; and what tells apart the counters of several limits on one descriptor (it leaves
    # out `requests_per_unit`, so raising or lowering a limit keeps the count).
    period: int = field(init=False, repr=False, compare=False)
    counter_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        period = self.unit.seconds * self.unit_multiplier
        object.__setattr__(self, "period", period)
        first_hit = self.window is Window.FIRST_HIT and self.algorithm is Algorithm.FIXED_WINDOW
        code = "fh" if first_hit else _ALGORITHM_CODES[self.algorithm]
        zone = f"@{self.time_zone}" if self.time_zone is not None else ""
        object.__setattr__(self, "counter_id", f"{code}{period}{zone}")

    @property
    def capacity(self) -> int:
        """The most that can be admitted at once."""
        if self.algorithm in _BURSTY and self.burst is not None:
            return self.burst
        return self.requests_per_unit


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """`algorithm: concurrency`: at most `max_in_flight` leases held at once on a key, each
    ending when released or after `lease_ttl_s` (leases.py). Only `Acquire` takes one; a
    decision (`ShouldRateLimit`) does not count it, as nothing would ever release it."""

    max_in_flight: int
    lease_ttl_s: float
    name: str = ""
    counter_id: str = "cc"  # the key's suffix: one set of leases per descriptor


@dataclass(frozen=True, slots=True)
class Rule:
    """What one config node says about the descriptors that end on it."""

    domain: str
    path: str
    limits: tuple[Limit, ...] = ()
    unlimited: bool = False
    shadow_mode: bool = False
    detailed_metric: bool = False
    quota_mode: bool = False
    replaces: frozenset[str] = frozenset()
    metadata: Any = None
    on_backend_failure: str | None = None  # one of BACKEND_FAILURE_MODES; None: the service's
    concurrency: ConcurrencyLimit | None = None  # leases, apart from `limits` (which it is not in)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(limit.name for limit in self.limits if limit.name)


Entry = tuple[str, str]


@dataclass(frozen=True, slots=True)
class LimitOverride:
    requests_per_unit: int
    unit: Unit


@dataclass(frozen=True, slots=True)
class Descriptor:
    entries: tuple[Entry, ...]
    override: LimitOverride | None = None
    hits_addend: int | None = None


@dataclass(frozen=True, slots=True)
class Request:
    domain: str
    descriptors: tuple[Descriptor, ...]
    hits_addend: int = 1


@dataclass(slots=True)  # read-only; not frozen: see `Decision`
class LimitResult:
    """The state of one limit after a hit (or a refused hit)."""

    allowed: bool
    remaining: int
    reset_after: float


@dataclass(slots=True)  # read-only; not frozen: see `Decision`
class Status:
    """The answer for one request descriptor."""

    code: Code
    limit: Limit | None = None
    remaining: int = 0
    reset_after: float = 0.0


@dataclass(slots=True)
class Decision:
    """The answer to one request.

    It and the other values made afresh for every decision (`Status`, `LimitResult`,
    `CounterResult`) are read-only by convention rather than frozen: a frozen dataclass costs
    three times as much to build, and several are built per call on the hot path.
    """

    overall: Code
    statuses: tuple[Status, ...] = field(default_factory=tuple)
    # for Envoy's `RateLimitResponse.dynamic_metadata` (a Struct), when it is asked for
    dynamic_metadata: dict[str, Any] | None = None
