"""The decision logic, free of any transport: request in, decision out.

It validates the request, matches each descriptor against the config, applies overrides,
`unlimited`, `replaces` and shadow mode, asks the backend to charge what is left in one
batch, and builds one status per descriptor.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ratelimitd import metrics
from ratelimitd.backends.base import Backend, CounterRequest, CounterResult
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.config.index import Match, RateLimitConfig
from ratelimitd.errors import BackendError, InvalidRequest
from ratelimitd.keys import counter_base
from ratelimitd.logs import get_logger, hashed
from ratelimitd.model import (
    Code,
    Decision,
    Descriptor,
    Entry,
    Limit,
    LimitResult,
    Request,
    Rule,
    Status,
)

UNLIMITED_REMAINING = 2**32 - 1
FAILURE_LOG_INTERVAL_S = 1.0
log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one request may hold; anything beyond is INVALID_ARGUMENT, never a crash."""

    max_descriptors: int = 256
    max_entries: int = 32
    max_key_length: int = 1024
    max_value_length: int = 4096
    max_hits: int = 2**32 - 1


@dataclass(frozen=True, slots=True)
class LimiterOptions:
    key_prefix: str = "ratelimitd:"
    shadow_mode: bool = False
    quota_mode: bool = False  # every rule in quota mode (upstream's QUOTA_MODE)
    response_dynamic_metadata: bool = False  # upstream's RESPONSE_DYNAMIC_METADATA
    backend_failure: str = "error"  # error | allow | deny | local, when the backend fails
    local_replicas: int = 1  # `local`: each replica counts 1/local_replicas of every limit
    near_limit_ratio: float = 0.8
    detailed_metric_max_values: int = 100
    bounds: Bounds = field(default_factory=lambda: Bounds())


@dataclass(frozen=True, slots=True)
class LimitState:
    """One matched limit as `peek` sees it."""

    descriptor_index: int
    rule: Rule
    limit: Limit
    result: LimitResult


@dataclass(frozen=True, slots=True)
class _Planned:
    """What one descriptor will be charged, if anything."""

    rule: Rule | None
    limits: tuple[Limit, ...]
    counter: CounterRequest | None
    entries: tuple[Entry, ...] = ()
    tallies: metrics.RuleCounters | None = None  # the rule's metrics, with a counter


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated request matched against `config`: what each descriptor will be charged."""

    config: RateLimitConfig
    plans: tuple[_Planned, ...]
    counters: tuple[CounterRequest, ...]
    request: Request
    quotas: tuple[bool, ...] = ()  # per plan, whether it is in quota mode; () when none is


class Limiter:
    def __init__(
        self, config: RateLimitConfig, backend: Backend, options: LimiterOptions | None = None
    ) -> None:
        self.config = config
        self.backend = backend
        self.options = options or LimiterOptions()
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S
        self._decisions = metrics.Tally(metrics.DECISIONS.labels(backend.name))
        self.rule_metrics = metrics.RuleMetrics(
            self.options.near_limit_ratio, self.options.detailed_metric_max_values
        )
        # `local` failure mode: this process's own counters while the backend is away
        self._local = MemoryBackend()

    async def should_rate_limit(self, request: Request) -> Decision:
        return await self.decide(self.prepare(request))

    def prepare(self, request: Request) -> Prepared:
        """Validates `request` and matches it against the current config: all the work of a
        decision that does not depend on the counters, so a caller may reuse it (see
        `services/prepared.py`) for as long as `prepared.config is limiter.config`."""
        validate(request, self.options.bounds)
        config = self.config  # one snapshot for the whole request, even across a reload
        plans = tuple(self._plan(config, request))
        counters = tuple(plan.counter for plan in plans if plan.counter is not None)
        quotas = tuple(
            plan.counter is not None
            and (self.options.quota_mode or (plan.rule is not None and plan.rule.quota_mode))
            for plan in plans
        )
        return Prepared(config, plans, counters, request, quotas if any(quotas) else ())

    async def decide(self, prepared: Prepared) -> Decision:
        """Charges what `prepared` asks for and answers it."""
        counters = prepared.counters
        if not counters:
            return self._decision(prepared, iter(()))
        try:
            results = await self.backend.hit(counters)
        except BackendError as exc:
            metrics.BACKEND_ERRORS.labels(self.backend.name, exc.kind).inc()
            return await self._on_backend_failure(prepared.plans, exc)
        self._decisions.inc(len(counters))
        return self._decision(prepared, iter(results))

    async def decide_many(self, batch: Sequence[Prepared]) -> list[Decision | BackendError]:
        """Decides each of `batch` as `decide` would, all at once. Each request is one call to
        the backend (its descriptors are charged all or nothing); the backend sends
        concurrent calls together (Redis: one pipeline). A backend failure is each one's
        `RATELIMITD_BACKEND_FAILURE` answer, or, in `error` mode, the error in its place."""

        async def one(prepared: Prepared) -> Decision | BackendError:
            try:
                return await self.decide(prepared)
            except BackendError as exc:
                return exc

        return list(await asyncio.gather(*(one(prepared) for prepared in batch)))

    def _decision(self, prepared: Prepared, results: Iterator[CounterResult]) -> Decision:
        """One status per plan, taking the next of `results` for each plan with a counter."""
        statuses = []
        over = False
        for plan in prepared.plans:
            if plan.counter is None:
                statuses.append(self._uncounted_status(plan))
                continue
            result = next(results)
            status = self._status(plan, result)
            self._observe(plan, status, result)
            if status.code is Code.OVER_LIMIT:
                over = True
            statuses.append(status)
        if prepared.quotas:
            over = _over_with_quotas(prepared.quotas, statuses)
        overall = Code.OVER_LIMIT if over and not self.options.shadow_mode else Code.OK
        decision = Decision(overall, tuple(statuses))
        if self.options.response_dynamic_metadata:
            decision.dynamic_metadata = dynamic_metadata(prepared, statuses)
        return decision

    def _observe(self, plan: _Planned, status: Status, result: CounterResult) -> None:
        """Per-rule metrics, and a debug line for each denial."""
        rule, counter, limit, tallies = plan.rule, plan.counter, status.limit, plan.tallies
        assert rule is not None and counter is not None and limit is not None
        assert tallies is not None
        over = not result.allowed
        tallies.record(counter.cost, limit.capacity, status.remaining, over, rule.shadow_mode)
        if over and _stdlib_log.isEnabledFor(logging.DEBUG):  # spares hashing values otherwise
            detail = "_".join(value for _, value in plan.entries)
            log.debug(
                "over limit",
                domain=rule.domain,
                rule=rule.path,
                keys=[key for key, _ in plan.entries],
                values=detail if rule.detailed_metric else [hashed(v) for _, v in plan.entries],
                limit=limit.name or limit.counter_id,
                shadow_mode=rule.shadow_mode,
            )

    async def peek(self, request: Request) -> list[LimitState]:
        """Where every limit the descriptors match stands, consuming nothing."""
        validate(request, self.options.bounds)
        config = self.config
        states: list[LimitState] = []
        probes: list[tuple[int, Rule, CounterRequest]] = []
        for index, descriptor in enumerate(request.descriptors):
            match = self._match(config, request.domain, descriptor)
            if match is None or not match.rule.limits:
                continue
            base = counter_base(self.options.key_prefix, request.domain, match.counter_entries)
            probes.append((index, match.rule, CounterRequest(base, match.rule.limits, 0)))
        results = await self.backend.hit([probe for _, _, probe in probes]) if probes else []
        for (index, rule, probe), result in zip(probes, results, strict=True):
            for limit, limit_result in zip(probe.limits, result.results, strict=True):
                states.append(LimitState(index, rule, limit, limit_result))
        return states

    async def reset(self, request: Request) -> int:
        """Clears the counters of every limit the descriptors match; returns how many existed."""
        validate(request, self.options.bounds)
        config = self.config
        counters = []
        for descriptor in request.descriptors:
            match = self._match(config, request.domain, descriptor)
            if match is not None and match.rule.limits:
                base = counter_base(self.options.key_prefix, request.domain, match.counter_entries)
                counters.append(CounterRequest(base, match.rule.limits, 0))
        return await self.backend.reset(counters) if counters else 0

    def _plan(self, config: RateLimitConfig, request: Request) -> list[_Planned]:
        matches = [self._match(config, request.domain, d) for d in request.descriptors]
        replaced: set[str] = set()
        for match in matches:
            if match is not None:
                replaced |= match.rule.replaces
        plans = []
        for descriptor, match in zip(request.descriptors, matches, strict=True):
            if match is None or match.rule.unlimited:
                plans.append(_Planned(match.rule if match else None, (), None))
                continue
            limits = tuple(limit for limit in match.rule.limits if limit.name not in replaced)
            if not limits:
                plans.append(_Planned(None, (), None))
                continue
            cost = request.hits_addend if descriptor.hits_addend is None else descriptor.hits_addend
            base = counter_base(self.options.key_prefix, request.domain, match.counter_entries)
            rule = match.rule
            binding = not (
                rule.shadow_mode
                or rule.quota_mode
                or self.options.shadow_mode
                or self.options.quota_mode
            )
            counter = CounterRequest(base, limits, cost, binding)
            detail = (
                "_".join(value for _, value in descriptor.entries) if rule.detailed_metric else ""
            )
            tallies = self.rule_metrics.counters(rule, detail)
            plans.append(_Planned(rule, limits, counter, descriptor.entries, tallies))
        return plans

    async def _on_backend_failure(self, plans: Sequence[_Planned], exc: BackendError) -> Decision:
        """Each counted descriptor's rule says what to answer (`on_backend_failure`), else
        `RATELIMITD_BACKEND_FAILURE`: re-raise (error, which wins over the others), answer OK
        (allow), deny, or count in this process (local)."""
        modes = [self._failure_mode(plan) for plan in plans]
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:  # one line a second, not a flood
            self._last_failure_log = now
            log.warning("backend failure", kind=exc.kind, backend_failure=modes, error=str(exc))
        if "error" in modes:
            raise exc
        local = {i: self._local_plan(plan) for i, plan in enumerate(plans) if modes[i] == "local"}
        counted = [plan.counter for plan in local.values() if plan.counter is not None]
        results = iter(await self._local.hit(counted) if counted else ())
        statuses = []
        for index, (plan, mode) in enumerate(zip(plans, modes, strict=True)):
            if mode == "deny":  # a retry is worth it once the limit's period is over
                statuses.append(
                    Status(Code.OVER_LIMIT, plan.limits[0], 0, float(plan.limits[0].period))
                )
            elif mode == "local":
                statuses.append(self._status(local[index], next(results)))
            else:
                statuses.append(Status(Code.OK))
        over = any(status.code is Code.OVER_LIMIT for status in statuses)
        return Decision(Code.OVER_LIMIT if over else Code.OK, tuple(statuses))

    def _local_plan(self, plan: _Planned) -> _Planned:
        """The plan with its limits divided among the replicas, on this process's counters."""
        replicas = self.options.local_replicas
        limits = tuple(
            dataclasses.replace(
                limit,
                requests_per_unit=max(limit.requests_per_unit // replicas, 1),
                burst=None if limit.burst is None else max(limit.burst // replicas, 1),
            )
            for limit in plan.limits
        )
        assert plan.counter is not None
        return dataclasses.replace(
            plan, limits=limits, counter=dataclasses.replace(plan.counter, limits=limits)
        )

    def _failure_mode(self, plan: _Planned) -> str | None:
        """What a descriptor answers while the backend fails; None when it was not counted."""
        if plan.counter is None:
            return None
        rule = plan.rule
        if rule is not None and rule.on_backend_failure is not None:
            return rule.on_backend_failure
        return self.options.backend_failure

    @staticmethod
    def _match(config: RateLimitConfig, domain: str, descriptor: Descriptor) -> Match | None:
        if descriptor.override is None:
            return config.match(domain, descriptor.entries)
        if domain not in config.domains:
            return None
        # A limit sent by the caller replaces the configured one, never in shadow mode.
        override = descriptor.override
        limit = Limit(override.requests_per_unit, override.unit)
        rule = Rule(domain=domain, path="(override)", limits=(limit,))
        return Match(rule, descriptor.entries)

    @staticmethod
    def _uncounted_status(plan: _Planned) -> Status:
        """A descriptor nothing was charged for: unlimited, or no rule matched."""
        if plan.rule is not None and plan.rule.unlimited:
            return Status(Code.OK, None, UNLIMITED_REMAINING, 0.0)
        return Status(Code.OK)

    @staticmethod
    def _status(plan: _Planned, result: CounterResult) -> Status:
        index = 0 if len(result.results) == 1 else _most_restrictive(result)
        limit_result = result.results[index]
        over = not result.allowed and not (plan.rule is not None and plan.rule.shadow_mode)
        remaining, reset_after = limit_result.remaining, limit_result.reset_after
        return Status(
            Code.OVER_LIMIT if over else Code.OK,
            plan.limits[index],
            remaining if remaining > 0 else 0,
            reset_after if reset_after > 0 else 0.0,
        )


def _over_with_quotas(quotas: Sequence[bool], statuses: Sequence[Status]) -> bool:
    """As envoyproxy/ratelimit decides with quota-mode descriptors: over the limit when a
    descriptor in rate-limit mode is, or when every one in quota mode is. A quota used up
    alone does not deny: its status says so, for Envoy to route elsewhere."""
    pairs = list(zip(quotas, statuses, strict=True))
    quota_over = [status.code is Code.OVER_LIMIT for quota, status in pairs if quota]
    limit_over = any(status.code is Code.OVER_LIMIT for quota, status in pairs if not quota)
    return limit_over or (bool(quota_over) and all(quota_over))


def dynamic_metadata(prepared: Prepared, statuses: Sequence[Status]) -> dict[str, Any]:
    """The response's `dynamic_metadata`, as envoyproxy/ratelimit builds it: the domain, the
    request's descriptors, and the `metadata` of the rules of the descriptors under their
    limit, merged (the first one wins a key that two give, and mappings merge)."""
    request = prepared.request
    fields: dict[str, Any] = {
        "domain": request.domain,
        "descriptors": [_descriptor_fields(descriptor) for descriptor in request.descriptors],
    }
    if request.hits_addend != 1:
        fields["hitsAddend"] = request.hits_addend
    merged: dict[str, Any] = {}
    for plan, status in zip(prepared.plans, statuses, strict=True):
        rule = plan.rule
        under_limit = plan.counter is not None and status.code is Code.OK
        if under_limit and rule is not None and isinstance(rule.metadata, dict):
            _merge(merged, rule.metadata)
    if merged:
        fields["metadata"] = merged
    return fields


def _descriptor_fields(descriptor: Descriptor) -> dict[str, Any]:
    fields: dict[str, Any] = {"entries": [f"{key}={value}" for key, value in descriptor.entries]}
    if descriptor.override is not None:
        override = descriptor.override
        fields["limit"] = (
            f"requests_per_unit:{override.requests_per_unit} unit:{override.unit.name}"
        )
    if descriptor.hits_addend is not None:
        fields["hitsAddend"] = descriptor.hits_addend
    return fields


def _merge(into: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        present = into.get(key)
        if key not in into:
            into[key] = copy.deepcopy(value)  # merging into it later must not touch the rule
        elif isinstance(present, dict) and isinstance(value, dict):
            _merge(present, value)


def _most_restrictive(result: CounterResult) -> int:
    """The denying limit that frees up last, or else the one with the least left."""
    indexed = list(enumerate(result.results))
    if not result.allowed:
        denying = [(r.reset_after, i) for i, r in indexed if not r.allowed]
        return max(denying)[1]
    return min((r.remaining, -r.reset_after, i) for i, r in indexed)[2]


def validate(request: Request, bounds: Bounds = Bounds()) -> None:
    if not request.domain:
        raise InvalidRequest("domain must not be empty")
    if len(request.domain) > bounds.max_key_length:
        raise InvalidRequest(f"domain is longer than {bounds.max_key_length} characters")
    if not request.descriptors:
        raise InvalidRequest("descriptors must not be empty")
    if len(request.descriptors) > bounds.max_descriptors:
        raise InvalidRequest(
            f"{len(request.descriptors)} descriptors: at most {bounds.max_descriptors} are allowed"
        )
    if request.hits_addend > bounds.max_hits:
        raise InvalidRequest(f"hits_addend {request.hits_addend} is over {bounds.max_hits}")
    for position, descriptor in enumerate(request.descriptors):
        where = f"descriptors[{position}]"
        if not descriptor.entries:
            raise InvalidRequest(f"{where} has no entries")
        if len(descriptor.entries) > bounds.max_entries:
            raise InvalidRequest(
                f"{where} has {len(descriptor.entries)} entries: at most {bounds.max_entries} are allowed"
            )
        if descriptor.hits_addend is not None and descriptor.hits_addend > bounds.max_hits:
            raise InvalidRequest(
                f"{where}.hits_addend {descriptor.hits_addend} is over {bounds.max_hits}"
            )
        for entry_position, (key, value) in enumerate(descriptor.entries):
            if not key:
                raise InvalidRequest(f"{where}.entries[{entry_position}] has an empty key")
            if len(key) > bounds.max_key_length:
                raise InvalidRequest(
                    f"{where}.entries[{entry_position}].key is longer than {bounds.max_key_length} characters"
                )
            if len(value) > bounds.max_value_length:
                raise InvalidRequest(
                    f"{where}.entries[{entry_position}].value is longer than {bounds.max_value_length} characters"
                )
