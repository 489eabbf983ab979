"""The matcher: finds the rule for a request descriptor, level by level.

At each level an exact `key`+`value` wins, then wildcard values in file order, then the key
alone. The first node found is taken (there is no backtracking), as in envoyproxy/ratelimit.
Keys and values are compared as a pair, never as a concatenated string, so `a_b`/`c` and
`a`/`b_c` stay apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ratelimitd.config.schema import DescriptorNode, DomainDocument
from ratelimitd.model import Charge, Entry, Rule, Window


@dataclass(frozen=True, slots=True)
class Match:
    """The rule a descriptor matched, and the entries that name its counter.

    `counter_entries` equal the request's entries, except that a level matched through a
    `share_threshold` wildcard carries the pattern, so every matching value shares one counter.
    """

    rule: Rule
    counter_entries: tuple[Entry, ...]


@dataclass(slots=True)
class Node:
    rule: Rule | None
    share_threshold: bool
    pattern: str | None
    children: Level | None


@dataclass(slots=True)
class Level:
    exact: dict[Entry, Node] = field(default_factory=dict)
    wildcards: list[tuple[str, re.Pattern[str], Node]] = field(default_factory=list)
    by_key: dict[str, Node] = field(default_factory=dict)

    def find(self, key: str, value: str) -> Node | None:
        node = self.exact.get((key, value))
        if node is not None:
            return node
        for wildcard_key, pattern, wildcard_node in self.wildcards:
            if wildcard_key == key and pattern.fullmatch(value):
                return wildcard_node
        return self.by_key.get(key)


def wildcard_pattern(value: str) -> re.Pattern[str]:
    """`*` matches any run of characters (including none); everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)


def _build_level(nodes: list[DescriptorNode]) -> Level:
    level = Level()
    for item in nodes:
        children = _build_level(item.children) if item.children else None
        node = Node(item.rule, item.share_threshold, item.value, children)
        if item.value is None:
            level.by_key[item.key] = node
        elif "*" in item.value:
            level.wildcards.append((item.key, wildcard_pattern(item.value), node))
        else:
            level.exact[(item.key, item.value)] = node
    return level


@dataclass(frozen=True, slots=True)
class DomainIndex:
    domain: str
    root: Level
    rules: tuple[Rule, ...]

    def match(self, entries: tuple[Entry, ...]) -> Match | None:
        level: Level | None = self.root
        counter_entries: list[Entry] = []
        last = len(entries) - 1
        for position, (key, value) in enumerate(entries):
            if level is None:
                return None
            node = level.find(key, value)
            if node is None:
                return None
            if node.share_threshold and node.pattern is not None:
                counter_entries.append((key, node.pattern))
            else:
                counter_entries.append((key, value))
            if position == last:
                return Match(node.rule, tuple(counter_entries)) if node.rule else None
            level = node.children
        return None


def build_domain(document: DomainDocument) -> DomainIndex:
    return DomainIndex(
        document.domain, _build_level(document.descriptors), tuple(_rules(document.descriptors))
    )


def _rules(nodes: list[DescriptorNode]) -> Iterator[Rule]:
    for node in nodes:
        if node.rule is not None:
            yield node.rule
        yield from _rules(node.children)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """One loaded config: every domain, and where it came from."""

    domains: dict[str, DomainIndex]
    sources: tuple[str, ...] = ()
    content_hash: str = ""
    loaded_at: float = 0.0
    texts: tuple[str, ...] = ()

    def match(self, domain: str, entries: tuple[Entry, ...]) -> Match | None:
        index = self.domains.get(domain)
        return index.match(entries) if index is not None else None

    def summary(self) -> list[str]:
        """One line per domain, for `check-config` and the startup log."""
        lines = []
        for name, index in sorted(self.domains.items()):
            limited = sum(1 for rule in index.rules if rule.limits)
            unlimited = sum(1 for rule in index.rules if rule.unlimited)
            lines.append(
                f"domain '{name}': {len(index.rules)} rules "
                f"({limited} limited, {unlimited} unlimited)"
            )
        return lines

    def describe_rules(self) -> list[str]:
        """One line per rule."""
        lines = []
        for name, index in sorted(self.domains.items()):
            for rule in index.rules:
                lines.append(f"{name}.{rule.path}: {describe_rule(rule)}")
        return lines


def describe_rule(rule: Rule) -> str:
    if rule.unlimited:
        text = "unlimited"
    else:
        parts = []
        for limit in rule.limits:
            every = limit.unit.name.lower()
            if limit.unit_multiplier != 1:
                every = f"{limit.unit_multiplier} {every}s"
            part = f"{limit.requests_per_unit} per {every} ({limit.algorithm.value}"
            if limit.burst is not None:
                part += f", burst {limit.burst}"
            if limit.window is Window.FIRST_HIT:
                part += ", from the first hit"
            if limit.time_zone is not None:
                part += f", calendar {limit.time_zone}"
            if limit.charge is Charge.ALWAYS:
                part += ", charge always"
            part += ")"
            if limit.name:
                part += f" name={limit.name}"
            parts.append(part)
        if rule.concurrency is not None:
            lease = rule.concurrency
            part = (
                f"{lease.max_in_flight} in flight (concurrency, leases of {lease.lease_ttl_s:g} s)"
            )
            parts.append(part + (f" name={lease.name}" if lease.name else ""))
        text = " and ".join(parts) if parts else "no limit"
    if rule.shadow_mode:
        text += " [shadow]"
    if rule.on_backend_failure is not None:
        text += f" [on backend failure: {rule.on_backend_failure}]"
    if rule.replaces:
        text += f" replaces={','.join(sorted(rule.replaces))}"
    return text
