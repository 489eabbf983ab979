"""The matcher: `RateLimitConfig.match(domain, entries)` picks a rule level by level."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ratelimitd.config import Match, RateLimitConfig, load_config
from ratelimitd.model import Entry, Limit, Unit
from tests.helpers import COMPAT

VALID = COMPAT / "valid"


def compat(name: str) -> RateLimitConfig:
    return load_config([VALID / name])


@pytest.fixture(scope="module")
def basic() -> RateLimitConfig:
    return compat("basic_config.yaml")


@pytest.fixture(scope="module")
def wildcard() -> RateLimitConfig:
    return compat("wildcard.yaml")


@pytest.fixture(scope="module")
def shared() -> RateLimitConfig:
    return compat("share_threshold.yaml")


def inline(tmp_path: Path, text: str) -> RateLimitConfig:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config([path])


def path_of(config: RateLimitConfig, domain: str, *entries: Entry) -> str | None:
    match = config.match(domain, entries)
    return None if match is None else match.rule.path


def must_match(config: RateLimitConfig, domain: str, *entries: Entry) -> Match:
    match = config.match(domain, entries)
    assert match is not None, f"no rule for {entries}"
    return match


# --- basic_config.yaml: exact, key-only default, nesting, depth ------------------------------


@pytest.mark.parametrize(
    ("entries", "path", "limit"),
    [
        (
            (("key1", "value1"), ("subkey1", "anything")),
            "key1_value1.subkey1",
            Limit(5, Unit.SECOND),
        ),
        (
            (("key1", "value1"), ("subkey1", "subvalue1")),
            "key1_value1.subkey1_subvalue1",
            Limit(10, Unit.SECOND),
        ),
        ((("key2", "whatever"),), "key2", Limit(20, Unit.MINUTE)),
        ((("key2", "value2"),), "key2_value2", Limit(30, Unit.MINUTE)),
        ((("key2", ""),), "key2", Limit(20, Unit.MINUTE)),
        ((("key4", "x"),), "key4", Limit(1, Unit.DAY, name="key4_rate_limit")),
        ((("key5", "value5"),), "key5_value5", Limit(15, Unit.DAY)),
        (
            (("key5", "value5"), ("subkey5", "subvalue5")),
            "key5_value5.subkey5_subvalue5",
            Limit(25, Unit.DAY),
        ),
    ],
)
def test_basic_config_matches(
    basic: RateLimitConfig, entries: tuple[Entry, ...], path: str, limit: Limit
) -> None:
    match = must_match(basic, "test-domain", *entries)
    assert match.rule.path == path
    assert match.rule.domain == "test-domain"
    assert match.rule.limits == (limit,)
    assert match.counter_entries == entries


def test_unlimited_rule(basic: RateLimitConfig) -> None:
    match = must_match(basic, "test-domain", ("key6", "x"))
    assert match.rule.unlimited
    assert match.rule.limits == ()


def test_whitelisted_value_has_no_limit(basic: RateLimitConfig) -> None:
    # key2/value3 has no rate_limit: an exact node without a rule, which wins over key2's default.
    assert basic.match("test-domain", (("key2", "value3"),)) is None


@pytest.mark.parametrize(
    "entries",
    [
        # Shorter than the configured path: key1/value1 itself has no limit.
        (("key1", "value1"),),
        # Longer: key2/value2 has no children.
        (("key2", "value2"), ("extra", "1")),
        (("key3", "x"), ("key3", "x")),
        # key5/value5 has a limit and a child, but the request goes one level further.
        (("key5", "value5"), ("subkey5", "subvalue5"), ("deeper", "x")),
        # The child exists only as an exact value.
        (("key5", "value5"), ("subkey5", "other")),
        # key1 has only a value node; another value finds nothing.
        (("key1", "other"), ("subkey1", "subvalue1")),
        (("nokey", "x"),),
        (),
    ],
)
def test_depth_mismatch_or_no_node_is_no_limit(
    basic: RateLimitConfig, entries: tuple[Entry, ...]
) -> None:
    assert basic.match("test-domain", entries) is None


def test_unknown_domain(basic: RateLimitConfig) -> None:
    assert basic.match("other-domain", (("key2", "value2"),)) is None
    assert basic.match("", (("key2", "value2"),)) is None


def test_keys_and_values_are_case_sensitive(basic: RateLimitConfig) -> None:
    assert path_of(basic, "test-domain", ("key2", "VALUE2")) == "key2"
    assert basic.match("test-domain", (("KEY2", "value2"),)) is None
    assert basic.match("TEST-DOMAIN", (("key2", "value2"),)) is None


# --- wildcard.yaml -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "path"),
    [
        ((("wild", "foo"),), "wild_foo*"),  # `*` matches the empty string
        ((("wild", "foobar"),), "wild_foo*"),
        ((("wild", "fo"),), None),
        ((("wild", "xfoo"),), None),
        ((("midWild", "barb"),), "midWild_bar*b"),
        ((("midWild", "bar-123-b"),), "midWild_bar*b"),
        ((("midWild", "barbx"),), None),
        ((("midWild", "bab"),), None),
        ((("multiWild", "foobarbaz"),), "multiWild_foo*bar*baz"),
        ((("multiWild", "foo1bar22baz"),), "multiWild_foo*bar*baz"),
        ((("multiWild", "foobazbar"),), None),
        ((("multiWild", "foobarbazz"),), None),
        ((("noWild", "foo"),), "noWild_foo"),
        ((("noWild", "foo*"),), None),
        ((("noWild", "foobar"),), None),
        ((("noVal", "anything"),), "noVal"),
        ((("nestedWild", "val1"), ("wild", "goo")), "nestedWild_val1.wild_goo*"),
        ((("nestedWild", "val1"), ("wild", "gooey")), "nestedWild_val1.wild_goo*"),
        ((("nestedWild", "val1"), ("wild", "foo")), None),
        ((("nestedWild", "val1"),), None),
    ],
)
def test_wildcard_config(
    wildcard: RateLimitConfig, entries: tuple[Entry, ...], path: str | None
) -> None:
    assert path_of(wildcard, "test-domain", *entries) == path


def test_wildcard_without_share_threshold_counts_per_value(wildcard: RateLimitConfig) -> None:
    one = must_match(wildcard, "test-domain", ("wild", "foo1"))
    two = must_match(wildcard, "test-domain", ("wild", "foo2"))
    assert one.rule is two.rule
    assert one.counter_entries == (("wild", "foo1"),)
    assert two.counter_entries == (("wild", "foo2"),)


def test_wildcard_text_is_literal_except_star(tmp_path: Path) -> None:
    config = inline(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            value: a.c+(x)*
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: any
            value: "*"
            rate_limit: {unit: second, requests_per_unit: 2}
        """,
    )
    assert path_of(config, "d", ("k", "a.c+(x)")) == "k_a.c+(x)*"
    assert path_of(config, "d", ("k", "a.c+(x)\nmore")) == "k_a.c+(x)*"
    assert config.match("d", (("k", "abc+(x)"),)) is None
    assert config.match("d", (("k", "a.cc(x)"),)) is None
    assert path_of(config, "d", ("any", "")) == "any_*"
    assert path_of(config, "d", ("any", "whatever")) == "any_*"


# --- precedence --------------------------------------------------------------------------------


PRECEDENCE = """\
    domain: d
    descriptors:
      - key: k
        rate_limit: {unit: second, requests_per_unit: 1}
      - key: k
        value: e*
        rate_limit: {unit: second, requests_per_unit: 2}
      - key: k
        value: ex*
        rate_limit: {unit: second, requests_per_unit: 3}
      - key: k
        value: exact
        rate_limit: {unit: second, requests_per_unit: 4}
    """


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("exact", "k_exact"),  # exact beats every wildcard and the default
        ("exactly", "k_e*"),  # both wildcards match: the first in the file wins
        ("eagle", "k_e*"),
        ("zebra", "k"),  # no value matches: the key-only default
        ("", "k"),
    ],
)
def test_exact_beats_wildcard_beats_default(tmp_path: Path, value: str, path: str) -> None:
    assert path_of(inline(tmp_path, PRECEDENCE), "d", ("k", value)) == path


@pytest.mark.parametrize(("first", "second"), [("'*a'", "b*"), ("b*", "'*a'")])
def test_wildcard_order_is_file_order(tmp_path: Path, first: str, second: str) -> None:
    config = inline(
        tmp_path,
        f"""\
        domain: d
        descriptors:
          - key: k
            value: {first}
            rate_limit: {{unit: second, requests_per_unit: 1}}
          - key: k
            value: {second}
            rate_limit: {{unit: second, requests_per_unit: 2}}
        """,
    )
    # "ba" matches both patterns: the one written first wins.
    assert must_match(config, "d", ("k", "ba")).rule.limits[0].requests_per_unit == 1
    # Each pattern alone still matches what only it covers.
    assert path_of(config, "d", ("k", "xa")) == "k_*a"
    assert path_of(config, "d", ("k", "bx")) == "k_b*"


def test_wildcard_of_another_key_does_not_match(tmp_path: Path) -> None:
    config = inline(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: other
            value: "*"
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: k
            rate_limit: {unit: second, requests_per_unit: 2}
        """,
    )
    assert path_of(config, "d", ("k", "v")) == "k"


# --- nesting -----------------------------------------------------------------------------------


NESTED = """\
    domain: d
    descriptors:
      - key: tier
        value: free
        descriptors:
          - key: user
            rate_limit: {unit: minute, requests_per_unit: 10}
            descriptors:
              - key: path
                value: /upload*
                rate_limit: {unit: minute, requests_per_unit: 1}
      - key: tier
        descriptors:
          - key: user
            rate_limit: {unit: minute, requests_per_unit: 100}
    """


@pytest.mark.parametrize(
    ("entries", "requests"),
    [
        ((("tier", "free"), ("user", "u1")), 10),
        ((("tier", "free"), ("user", "u1"), ("path", "/upload/a")), 1),
        ((("tier", "gold"), ("user", "u1")), 100),
        ((("tier", "free"),), None),
        ((("tier", "gold"),), None),
        ((("tier", "free"), ("user", "u1"), ("path", "/download")), None),
        ((("tier", "free"), ("user", "u1"), ("path", "/upload/a"), ("x", "y")), None),
        ((("user", "u1"), ("tier", "free")), None),
        # No backtracking: tier=free is found first, and it has no `plan` child.
        ((("tier", "free"), ("plan", "p")), None),
        # Likewise the default `tier` has no `path` child under `user`.
        ((("tier", "gold"), ("user", "u1"), ("path", "/upload/a")), None),
    ],
)
def test_nested_descriptors(
    tmp_path: Path, entries: tuple[Entry, ...], requests: int | None
) -> None:
    match = inline(tmp_path, NESTED).match("d", entries)
    if requests is None:
        assert match is None
    else:
        assert match is not None
        assert match.rule.limits[0].requests_per_unit == requests
        assert match.counter_entries == entries


def test_node_without_rate_limit_is_no_limit(tmp_path: Path) -> None:
    config = inline(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: k
            value: trusted
          - key: k
            value: trusted-*
        """,
    )
    assert config.match("d", (("k", "trusted"),)) is None
    assert config.match("d", (("k", "trusted-1"),)) is None
    assert path_of(config, "d", ("k", "other")) == "k"


# --- keys and values are pairs ---------------------------------------------------------------


def test_key_value_pairs_do_not_collide(tmp_path: Path) -> None:
    config = inline(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: a_b
            value: c
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: a
            value: b_c
            rate_limit: {unit: second, requests_per_unit: 2}
          - key: a_b_c
            rate_limit: {unit: second, requests_per_unit: 3}
        """,
    )
    first = must_match(config, "d", ("a_b", "c"))
    second = must_match(config, "d", ("a", "b_c"))
    third = must_match(config, "d", ("a_b_c", "x"))
    assert first.rule is not second.rule
    assert [m.rule.limits[0].requests_per_unit for m in (first, second, third)] == [1, 2, 3]
    assert first.counter_entries != second.counter_entries
    assert config.match("d", (("a", "b"), ("c", ""))) is None
    assert config.match("d", (("a_b", "d"),)) is None


def test_domains_are_separate(tmp_path: Path) -> None:
    config = inline(
        tmp_path,
        """\
        domain: one
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 1}
        ---
        domain: two
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 2}
        """,
    )
    assert must_match(config, "one", ("k", "v")).rule.domain == "one"
    assert must_match(config, "two", ("k", "v")).rule.limits[0].requests_per_unit == 2
    assert config.match("three", (("k", "v"),)) is None


# --- share_threshold ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "counter", "requests"),
    [
        ((("files", "files/a.txt"),), (("files", "files/*"),), 100),
        ((("files", "files/"),), (("files", "files/*"),), 100),
        (
            (("nested", "parent"), ("files", "nested/x")),
            (("nested", "parent"), ("files", "nested/*")),
            200,
        ),
        (
            (("files", "top/a"), ("files", "nested/b")),
            (("files", "top/*"), ("files", "nested/*")),
            300,
        ),
        ((("route", "api/v1"), ("method", "GET")), (("route", "api/*"), ("method", "GET")), 60),
        (
            (("service", "svc/a"), ("endpoint", "/x")),
            (("service", "svc/*"), ("endpoint", "/x")),
            80,
        ),
        # path/* shares, file/* does not: only the first level carries the pattern.
        (
            (("path", "path/a"), ("file", "file/b"), ("type", "t")),
            (("path", "path/*"), ("file", "file/b"), ("type", "t")),
            120,
        ),
        (
            (("user", "user/1"), ("resource", "res/2"), ("action", "read")),
            (("user", "user/*"), ("resource", "res/*"), ("action", "read")),
            150,
        ),
        # An exact value beats the sharing wildcard and keeps its own counter.
        ((("file", "test1"),), (("file", "test1"),), 50),
        ((("file", "test2"),), (("file", "test*"),), 100),
        ((("midpath", "/api/x/v1"),), (("midpath", "/api*v1"),), 100),
        ((("multiroute", "svcAepBrpc"),), (("multiroute", "svc*ep*rpc"),), 50),
        ((("midroute", "/api-v2"),), (("midroute", "/api*v2"),), 80),
        (
            (("tenant", "t1prod"), ("resource", "resAv2")),
            (("tenant", "t*prod"), ("resource", "res*v2")),
            60,
        ),
    ],
)
def test_share_threshold_counter_entries_carry_the_pattern(
    shared: RateLimitConfig,
    entries: tuple[Entry, ...],
    counter: tuple[Entry, ...],
    requests: int,
) -> None:
    match = must_match(shared, "test-domain", *entries)
    assert match.counter_entries == counter
    assert match.rule.limits[0].requests_per_unit == requests


def test_share_threshold_values_share_one_counter(shared: RateLimitConfig) -> None:
    one = must_match(shared, "test-domain", ("files", "files/a"))
    two = must_match(shared, "test-domain", ("files", "files/b"))
    assert one.rule is two.rule
    assert one.counter_entries == two.counter_entries


def test_share_threshold_non_matching_values(shared: RateLimitConfig) -> None:
    assert shared.match("test-domain", (("files", "other/a"),)) is None
    assert shared.match("test-domain", (("files", "top/a"),)) is None
    assert shared.match("test-domain", (("midpath", "/api/x/v2"),)) is None


def test_share_threshold_only_where_set(tmp_path: Path) -> None:
    config = inline(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: shared
            value: a*
            share_threshold: true
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: own
            value: a*
            share_threshold: false
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: plain
            value: a*
            rate_limit: {unit: second, requests_per_unit: 1}
        """,
    )
    assert must_match(config, "d", ("shared", "abc")).counter_entries == (("shared", "a*"),)
    assert must_match(config, "d", ("own", "abc")).counter_entries == (("own", "abc"),)
    assert must_match(config, "d", ("plain", "abc")).counter_entries == (("plain", "abc"),)
