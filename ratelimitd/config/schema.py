"""Validates one YAML document in envoyproxy/ratelimit's format, with our extensions.

It walks the YAML node tree rather than the constructed Python objects, so every error can
name its line, duplicate mapping keys are caught, and non-string keys are told apart from
strings. Every problem in a file is collected; nothing stops at the first one.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from ratelimitd import calendar_windows
from ratelimitd.model import (
    BACKEND_FAILURE_MODES,
    Algorithm,
    Charge,
    ConcurrencyLimit,
    Limit,
    Rule,
    Unit,
    Window,
)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"

DOMAIN_KEYS = frozenset({"domain", "descriptors"})
DESCRIPTOR_KEYS = frozenset(
    {
        "key",
        "value",
        "rate_limit",
        "rate_limits",
        "descriptors",
        "shadow_mode",
        "detailed_metric",
        "value_to_metric",
        "share_threshold",
        "quota_mode",
        "metadata",
        "on_backend_failure",
    }
)
LIMIT_KEYS = frozenset(
    {
        "unit",
        "requests_per_unit",
        "unlimited",
        "name",
        "replaces",
        "unit_multiplier",
        "algorithm",
        "burst",
        "charge",
        "window",
        "calendar",
        "time_zone",
        "max_in_flight",
        "lease_ttl_s",
    }
)
# `algorithm: concurrency` takes these and no others
CONCURRENCY_KEYS = frozenset({"algorithm", "name", "max_in_flight", "lease_ttl_s"})
CONCURRENCY = "concurrency"
DEFAULT_LEASE_TTL_S = 60.0
MAX_LEASE_TTL_S = 86_400.0
UNIT_NAMES = ", ".join(unit.name.lower() for unit in Unit)
ALGORITHM_NAMES = ", ".join([*(algorithm.value for algorithm in Algorithm), CONCURRENCY])
MAX_REQUESTS_PER_UNIT = 2**32 - 1
# Deeper than any real descriptor (Envoy sends a handful of entries; requests allow 32).
MAX_DEPTH = 32


@dataclass
class DescriptorNode:
    """One `descriptors` entry, validated."""

    key: str
    value: str | None
    rule: Rule | None
    share_threshold: bool
    children: list[DescriptorNode] = field(default_factory=list)


@dataclass
class DomainDocument:
    domain: str
    descriptors: list[DescriptorNode]
    line: int


class ErrorList:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[str] = []

    def add(self, node: yaml.Node, where: str, message: str) -> None:
        place = f"line {node.start_mark.line + 1}"
        if where:
            place += f", {where}"
        self.items.append(f"{self.file}: {place}: {message}")


def _constructor() -> yaml.SafeLoader:
    return yaml.SafeLoader("")


def _scalar_text(node: yaml.Node) -> str | None:
    """The text of a non-null scalar, or None."""
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
        return str(node.value)
    return None


def _mapping(
    node: yaml.Node, where: str, allowed: frozenset[str], errors: ErrorList
) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """The keys of a mapping node, checked for type, spelling and duplicates."""
    if not isinstance(node, yaml.MappingNode):
        shown = _scalar_text(node)
        kind = f"'{shown}'" if shown is not None else _kind(node)
        errors.add(node, where, f"expected a map, got {kind}")
        return None
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else _kind(key_node)
            errors.add(key_node, where, f"key is not of type string: {shown}")
            continue
        name = str(key_node.value)
        if name not in allowed:
            errors.add(key_node, where, f"unknown key '{name}' (expected one of {_names(allowed)})")
            continue
        if name in out:
            errors.add(key_node, where, f"key '{name}' is given twice")
            continue
        out[name] = (key_node, value_node)
    return out


def _names(keys: frozenset[str]) -> str:
    return ", ".join(sorted(keys))


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a map"
    if node.tag == _NULL:
        return "nothing"
    return f"'{node.value}'"


def _bool(node: yaml.Node, where: str, errors: ErrorList) -> bool:
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
        return bool(_constructor().construct_yaml_bool(node))
    errors.add(node, where, f"expected true or false, got {_kind(node)}")
    return False


def _int(node: yaml.Node, where: str, errors: ErrorList, minimum: int) -> int | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
        number = int(_constructor().construct_yaml_int(node))
        if minimum <= number <= MAX_REQUESTS_PER_UNIT:
            return number
        errors.add(
            node, where, f"must be between {minimum} and {MAX_REQUESTS_PER_UNIT}, got {number}"
        )
        return None
    errors.add(node, where, f"expected a whole number, got {_kind(node)}")
    return None


def _text(node: yaml.Node, where: str, errors: ErrorList) -> str | None:
    text = _scalar_text(node)
    if text is None:
        errors.add(node, where, f"expected a string, got {_kind(node)}")
    return text


def parse_document(node: yaml.Node, errors: ErrorList) -> DomainDocument | None:
    fields = _mapping(node, "", DOMAIN_KEYS, errors)
    if fields is None:
        return None
    domain = ""
    if "domain" in fields and not isinstance(fields["domain"][1], yaml.ScalarNode):
        errors.add(
            fields["domain"][1], "domain", f"expected a string, got {_kind(fields['domain'][1])}"
        )
        return None
    if "domain" in fields:
        domain = _scalar_text(fields["domain"][1]) or ""
    if not domain:
        errors.add(node, "", "config file cannot have empty domain")
    descriptors: list[DescriptorNode] = []
    if "descriptors" in fields:
        descriptors = _descriptor_list(fields["descriptors"][1], "descriptors", domain, "", errors)
    return DomainDocument(domain, descriptors, node.start_mark.line + 1) if domain else None


def _descriptor_list(
    node: yaml.Node, where: str, domain: str, parent_path: str, errors: ErrorList
) -> list[DescriptorNode]:
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return []
    if not isinstance(node, yaml.SequenceNode):
        errors.add(node, where, f"expected a list of descriptors, got {_kind(node)}")
        return []
    if (
        where.count("descriptors") > MAX_DEPTH
    ):  # `where` names each level: descriptors[i].descriptors
        errors.add(node, where, f"descriptors are nested more than {MAX_DEPTH} levels deep")
        return []
    out: list[DescriptorNode] = []
    seen: dict[tuple[str, str | None], int] = {}
    for index, item in enumerate(node.value):
        item_where = f"{where}[{index}]"
        if not isinstance(item, yaml.MappingNode):
            errors.add(
                item, item_where, f"yaml file contains list of type other than map: {_kind(item)}"
            )
            continue
        parsed = _descriptor(item, item_where, domain, parent_path, errors)
        if parsed is None:
            continue
        composite = (parsed.key, parsed.value)
        if composite in seen:
            shown = parsed.key if parsed.value is None else f"{parsed.key}={parsed.value}"
            errors.add(
                item,
                item_where,
                f"duplicate descriptor composite key '{shown}' "
                f"(already at {where}[{seen[composite]}])",
            )
            continue
        seen[composite] = index
        out.append(parsed)
    return out


def _descriptor(
    node: yaml.Node, where: str, domain: str, parent_path: str, errors: ErrorList
) -> DescriptorNode | None:
    before = len(errors.items)
    fields = _mapping(node, where, DESCRIPTOR_KEYS, errors)
    if fields is None:
        return None
    if "key" in fields and not isinstance(fields["key"][1], yaml.ScalarNode):
        errors.add(
            fields["key"][1], f"{where}.key", f"expected a string, got {_kind(fields['key'][1])}"
        )
        return None
    key = _scalar_text(fields["key"][1]) if "key" in fields else None
    if not key:
        errors.add(node, where, "descriptor has empty key")
        return None
    value: str | None = None
    if "value" in fields:
        value_node = fields["value"][1]
        if not isinstance(value_node, yaml.ScalarNode):
            errors.add(value_node, f"{where}.value", f"expected a string, got {_kind(value_node)}")
            return None
        # An empty value is no value: the key-only default, as upstream reads it.
        value = _scalar_text(value_node) or None
    segment = key if value is None else f"{key}_{value}"
    path = f"{parent_path}.{segment}" if parent_path else segment

    flags = {
        name: _bool(fields[name][1], f"{where}.{name}", errors)
        for name in (
            "shadow_mode",
            "detailed_metric",
            "value_to_metric",
            "share_threshold",
            "quota_mode",
        )
        if name in fields
    }
    metadata: Any = None
    if "metadata" in fields:
        metadata = _constructor().construct_object(fields["metadata"][1], deep=True)
    on_failure = _on_backend_failure(fields, where, errors)

    if "rate_limit" in fields and "rate_limits" in fields:
        errors.add(node, where, "give either rate_limit or rate_limits, not both")
    limits: list[Limit] = []
    unlimited = False
    replaces: set[str] = set()
    has_rule = False
    concurrency: ConcurrencyLimit | None = None
    if "rate_limit" in fields:
        has_rule = True
        parsed = _limit(
            fields["rate_limit"][1], f"{where}.rate_limit", errors, allow_unlimited=True
        )
        if parsed is not None:
            limit, unlimited, names = parsed
            replaces |= names
            if isinstance(limit, ConcurrencyLimit):
                concurrency = limit
            elif limit is not None:
                limits.append(limit)
    elif "rate_limits" in fields:
        has_rule = True
        limits, replaces, concurrency = _limit_list(
            fields["rate_limits"][1], f"{where}.rate_limits", errors
        )

    own_names = {limit.name for limit in limits if limit.name}
    for name in sorted(own_names & replaces):
        errors.add(node, where, f"replaces should not contain name of same descriptor: '{name}'")

    share_threshold = flags.get("share_threshold", False)
    if share_threshold and (value is None or "*" not in value):
        errors.add(node, f"{where}.share_threshold", "share_threshold needs a wildcard value")

    children: list[DescriptorNode] = []
    if "descriptors" in fields:
        children = _descriptor_list(
            fields["descriptors"][1], f"{where}.descriptors", domain, path, errors
        )
    if len(errors.items) > before:
        return None
    rule = None
    if has_rule:
        rule = Rule(
            domain=domain,
            path=path,
            limits=tuple(limits),
            unlimited=unlimited,
            shadow_mode=flags.get("shadow_mode", False),
            detailed_metric=flags.get("detailed_metric", False),
            quota_mode=flags.get("quota_mode", False),
            replaces=frozenset(replaces),
            metadata=metadata,
            on_backend_failure=on_failure,
            concurrency=concurrency,
        )
    return DescriptorNode(key, value, rule, share_threshold, children)


def _on_backend_failure(
    fields: dict[str, tuple[yaml.Node, yaml.Node]], where: str, errors: ErrorList
) -> str | None:
    """`on_backend_failure: error | allow | deny`: this rule's answer while the backend is
    unreachable, over RATELIMITD_BACKEND_FAILURE."""
    if "on_backend_failure" not in fields:
        return None
    value = fields["on_backend_failure"][1]
    text = (_scalar_text(value) or "").strip().lower()
    if text not in BACKEND_FAILURE_MODES:
        shown = ", ".join(BACKEND_FAILURE_MODES)
        errors.add(
            value,
            f"{where}.on_backend_failure",
            f"invalid on_backend_failure '{text}' (expected one of {shown})",
        )
        return None
    return text


def _limit_list(
    node: yaml.Node, where: str, errors: ErrorList
) -> tuple[list[Limit], set[str], ConcurrencyLimit | None]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        got = "an empty list" if isinstance(node, yaml.SequenceNode) else _kind(node)
        errors.add(node, where, f"expected a non-empty list of limits, got {got}")
        return [], set(), None
    limits: list[Limit] = []
    replaces: set[str] = set()
    seen: dict[str, int] = {}
    concurrency: ConcurrencyLimit | None = None
    for index, item in enumerate(node.value):
        item_where = f"{where}[{index}]"
        parsed = _limit(item, item_where, errors, allow_unlimited=False)
        if parsed is None:
            continue
        limit, _, names = parsed
        if limit is None:
            continue
        if isinstance(limit, ConcurrencyLimit):
            if concurrency is not None:
                errors.add(item, item_where, "a second concurrency limit; a rule has one at most")
            concurrency = limit
            continue
        replaces |= names
        if limit.counter_id in seen:
            errors.add(
                item,
                item_where,
                f"a second {limit.algorithm.value} limit over {limit.period}s "
                f"(the same as {where}[{seen[limit.counter_id]}]); merge them into one",
            )
            continue
        seen[limit.counter_id] = index
        limits.append(limit)
    return limits, replaces, concurrency


def _limit(
    node: yaml.Node, where: str, errors: ErrorList, allow_unlimited: bool
) -> tuple[Limit | ConcurrencyLimit | None, bool, set[str]] | None:
    before = len(errors.items)
    allowed = LIMIT_KEYS if allow_unlimited else LIMIT_KEYS - {"unlimited"}
    if _is_concurrency(node):
        concurrency = _concurrency(node, where, errors)
        return (concurrency, False, set()) if concurrency is not None else None
    fields = _mapping(node, where, allowed, errors)
    if fields is None:
        return None
    for key in ("max_in_flight", "lease_ttl_s"):
        if key in fields:
            errors.add(fields[key][0], f"{where}.{key}", f"{key} is only for algorithm concurrency")
    unlimited = "unlimited" in fields and _bool(
        fields["unlimited"][1], f"{where}.unlimited", errors
    )
    name = ""
    if "name" in fields:
        name = _text(fields["name"][1], f"{where}.name", errors) or ""
    replaces = (
        _replaces(fields["replaces"][1], f"{where}.replaces", errors)
        if "replaces" in fields
        else set()
    )

    unit: Unit | None = None
    if "unit" in fields:
        unit_text = _scalar_text(fields["unit"][1]) or ""
        unit = Unit.parse(unit_text)
        if unlimited:
            errors.add(
                fields["unit"][1],
                f"{where}.unit",
                "should not specify rate limit unit when unlimited",
            )
        elif unit is None:
            errors.add(
                fields["unit"][1],
                f"{where}.unit",
                f"invalid rate limit unit '{unit_text}' (expected one of {UNIT_NAMES})",
            )
    elif not unlimited:
        errors.add(node, where, f"rate limit unit is required (one of {UNIT_NAMES})")
    if unlimited:
        for extra in (
            "algorithm",
            "burst",
            "unit_multiplier",
            "charge",
            "window",
            "calendar",
            "time_zone",
        ):
            if extra in fields:
                errors.add(
                    fields[extra][0],
                    f"{where}.{extra}",
                    f"should not specify {extra} when unlimited",
                )
        return (None, True, replaces) if len(errors.items) == before else None

    requests = None
    if "requests_per_unit" in fields:
        requests = _int(fields["requests_per_unit"][1], f"{where}.requests_per_unit", errors, 0)
    else:
        errors.add(node, where, "requests_per_unit is required")
    multiplier = 1
    if "unit_multiplier" in fields:
        multiplier = _int(fields["unit_multiplier"][1], f"{where}.unit_multiplier", errors, 1) or 1
    algorithm = Algorithm.FIXED_WINDOW
    if "algorithm" in fields:
        algorithm_text = _scalar_text(fields["algorithm"][1]) or ""
        try:
            algorithm = Algorithm(algorithm_text.strip().lower())
        except ValueError:
            errors.add(
                fields["algorithm"][1],
                f"{where}.algorithm",
                f"invalid algorithm '{algorithm_text}' (expected one of {ALGORITHM_NAMES})",
            )
    burst = None
    if "burst" in fields:
        burst = _int(fields["burst"][1], f"{where}.burst", errors, 1)
        if algorithm not in (Algorithm.TOKEN_BUCKET, Algorithm.GCRA):
            errors.add(
                fields["burst"][0],
                f"{where}.burst",
                "burst is only for algorithm token_bucket or gcra",
            )
    if algorithm in (Algorithm.TOKEN_BUCKET, Algorithm.GCRA) and requests == 0:
        errors.add(
            fields["requests_per_unit"][1],
            f"{where}.requests_per_unit",
            f"a {algorithm.value} needs requests_per_unit of at least 1 (its rate)",
        )
    charge = _charge(fields, where, requests, errors)
    window = _window(fields, where, algorithm, errors)
    time_zone = _calendar(fields, where, (unit, multiplier, algorithm, window), errors)
    if len(errors.items) > before or unit is None or requests is None:
        return None
    limit = Limit(requests, unit, multiplier, algorithm, burst, name, charge, window, time_zone)
    return limit, False, replaces


def _is_concurrency(node: yaml.Node) -> bool:
    """Whether `node` is a map that says `algorithm: concurrency`."""
    if not isinstance(node, yaml.MappingNode):
        return False
    return any(
        _scalar_text(key) == "algorithm"
        and (_scalar_text(value) or "").strip().lower() == CONCURRENCY
        for key, value in node.value
    )


def _concurrency(node: yaml.Node, where: str, errors: ErrorList) -> ConcurrencyLimit | None:
    """`{algorithm: concurrency, max_in_flight: N, lease_ttl_s: T}` (T defaults to 60 s)."""
    before = len(errors.items)
    fields = _mapping(node, where, CONCURRENCY_KEYS, errors)
    if fields is None:
        return None
    name = _text(fields["name"][1], f"{where}.name", errors) or "" if "name" in fields else ""
    most = None
    if "max_in_flight" in fields:
        most = _int(fields["max_in_flight"][1], f"{where}.max_in_flight", errors, 1)
    else:
        errors.add(node, where, "max_in_flight is required for algorithm concurrency")
    ttl = DEFAULT_LEASE_TTL_S
    if "lease_ttl_s" in fields:
        ttl = _seconds(fields["lease_ttl_s"][1], f"{where}.lease_ttl_s", errors, MAX_LEASE_TTL_S)
    if len(errors.items) > before or most is None:
        return None
    return ConcurrencyLimit(most, ttl, name)


def _seconds(node: yaml.Node, where: str, errors: ErrorList, most: float) -> float:
    """A number of seconds, more than 0 and at most `most`."""
    text = _scalar_text(node) if isinstance(node, yaml.ScalarNode) and node.tag != _STR else None
    try:
        seconds = float(text) if text is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= most:  # also false for NaN
        errors.add(
            node, where, f"expected seconds, more than 0 and at most {most:g}, got {_kind(node)}"
        )
    return seconds


E = TypeVar("E", bound=enum.Enum)


def _choice(
    fields: dict[str, tuple[yaml.Node, yaml.Node]],
    name: str,
    where: str,
    default: E,
    errors: ErrorList,
) -> E:
    """A key whose value names a member of `default`'s enum (its `value`, any case)."""
    if name not in fields:
        return default
    value = fields[name][1]
    text = _scalar_text(value) or ""
    try:
        return type(default)(text.strip().lower())
    except ValueError:
        names = ", ".join(member.value for member in type(default))
        errors.add(value, f"{where}.{name}", f"invalid {name} '{text}' (expected one of {names})")
        return default


def _window(
    fields: dict[str, tuple[yaml.Node, yaml.Node]],
    where: str,
    algorithm: Algorithm,
    errors: ErrorList,
) -> Window:
    """`window: aligned | first_hit` (where a fixed window starts)."""
    window = _choice(fields, "window", where, Window.ALIGNED, errors)
    if "window" in fields and algorithm is not Algorithm.FIXED_WINDOW:
        errors.add(
            fields["window"][0], f"{where}.window", "window is only for algorithm fixed_window"
        )
    return window


def _calendar(
    fields: dict[str, tuple[yaml.Node, yaml.Node]],
    where: str,
    shape: tuple[Unit | None, int, Algorithm, Window],
    errors: ErrorList,
) -> str | None:
    """`calendar: true` with `time_zone: NAME` (default UTC): the time zone whose calendar
    aligns the windows, or None for windows of fixed length on the epoch's grid."""
    calendar = "calendar" in fields and _bool(fields["calendar"][1], f"{where}.calendar", errors)
    if "time_zone" in fields and not calendar:
        errors.add(fields["time_zone"][0], f"{where}.time_zone", "time_zone needs calendar: true")
    if not calendar:
        return None
    key = fields["calendar"][0]
    unit, multiplier, algorithm, window = shape
    if unit is not None and unit not in calendar_windows.CALENDAR_UNITS:
        names = ", ".join(unit.name.lower() for unit in calendar_windows.CALENDAR_UNITS)
        errors.add(key, f"{where}.calendar", f"calendar: true needs a unit of {names}")
    if algorithm is not Algorithm.FIXED_WINDOW or window is not Window.ALIGNED:
        errors.add(key, f"{where}.calendar", "calendar is only for an aligned fixed_window")
    if multiplier != 1:
        errors.add(key, f"{where}.calendar", "calendar: true needs unit_multiplier 1")
    if "time_zone" not in fields:
        return "UTC"
    node = fields["time_zone"][1]
    name = _text(node, f"{where}.time_zone", errors) or ""
    try:
        calendar_windows.zone(name)
    except ValueError:
        errors.add(
            node,
            f"{where}.time_zone",
            f"unknown time zone '{name}' (an IANA name such as Europe/Paris or UTC)",
        )
    return name


def _charge(
    fields: dict[str, tuple[yaml.Node, yaml.Node]],
    where: str,
    requests: int | None,
    errors: ErrorList,
) -> Charge:
    """`charge: if_fits | always` (what a cost that does not fit is charged)."""
    charge = _choice(fields, "charge", where, Charge.IF_FITS, errors)
    if charge is Charge.ALWAYS and requests == 0:
        errors.add(
            fields["charge"][0],
            f"{where}.charge",
            "charge: always needs requests_per_unit of at least 1 (what pays a debt off)",
        )
    return charge


def _replaces(node: yaml.Node, where: str, errors: ErrorList) -> set[str]:
    if not isinstance(node, yaml.SequenceNode):
        errors.add(node, where, f"expected a list of {{name: ...}}, got {_kind(node)}")
        return set()
    names: set[str] = set()
    for index, item in enumerate(node.value):
        item_where = f"{where}[{index}]"
        fields = _mapping(item, item_where, frozenset({"name"}), errors)
        if fields is None:
            continue
        name = _scalar_text(fields["name"][1]) if "name" in fields else None
        if not name:
            errors.add(item, item_where, "should not have an empty replaces entry")
            continue
        names.add(name)
    return names
