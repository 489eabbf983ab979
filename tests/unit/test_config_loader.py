"""The config loader: envoyproxy/ratelimit's corpus, and one fixture per error we report.

Every rejection asserts the exact `FILE: line N, PLACE: message` lines, so a change of wording
is a deliberate change of this file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ratelimitd.config import RateLimitConfig, load_config
from ratelimitd.config.loader import config_from_texts
from ratelimitd.errors import ConfigError
from ratelimitd.model import Algorithm, Limit, Rule, Unit
from tests.helpers import COMPAT

VALID = COMPAT / "valid"
INVALID = COMPAT / "invalid"

UNITS = "second, minute, hour, day, month, year, week"
DESCRIPTOR_KEYS = (
    "descriptors, detailed_metric, key, metadata, on_backend_failure, quota_mode, rate_limit, "
    "rate_limits, shadow_mode, share_threshold, value, value_to_metric"
)
LIMIT_KEYS = (
    "algorithm, burst, calendar, charge, lease_ttl_s, max_in_flight, name, replaces, "
    "requests_per_unit, time_zone, unit, unit_multiplier, unlimited, window"
)


def _corpus(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_file())


def write(directory: Path, text: str, name: str = "rules.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(*paths: str | Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(paths)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def rules_by_path(config: RateLimitConfig, domain: str) -> dict[str, Rule]:
    return {rule.path: rule for rule in config.domains[domain].rules}


def one_rule(path: Path) -> Rule:
    config = load_config([path])
    (index,) = config.domains.values()
    (rule,) = index.rules
    return rule


# --- envoyproxy/ratelimit's corpus -------------------------------------------------------------


def test_compat_corpus_is_present() -> None:
    assert {"basic_config.yaml", "wildcard.yaml", "share_threshold.yaml"} <= set(_corpus(VALID))
    assert set(_corpus(INVALID)) == set(INVALID_MESSAGES)


@pytest.mark.parametrize("name", _corpus(VALID))
def test_every_valid_compat_file_loads_alone(name: str) -> None:
    path = VALID / name
    config = load_config([path])
    assert config.domains
    assert config.sources == (str(path),)
    for index in config.domains.values():
        assert index.rules


def test_basic_config_facts() -> None:
    config = load_config([VALID / "basic_config.yaml"])
    assert list(config.domains) == ["test-domain"]
    rules = rules_by_path(config, "test-domain")
    assert rules["key4"].limits == (Limit(1, Unit.DAY, name="key4_rate_limit"),)
    assert rules["key4"].names == frozenset({"key4_rate_limit"})
    assert rules["key6"].unlimited
    assert rules["key6"].limits == ()
    assert rules["key1_value1.subkey1"].limits == (Limit(5, Unit.SECOND),)
    assert rules["key1_value1.subkey1_subvalue1"].limits == (Limit(10, Unit.SECOND),)
    assert rules["key5_value5.subkey5_subvalue5"].limits == (Limit(25, Unit.DAY),)
    assert rules["key7"].detailed_metric
    # key2/value3 has no rate_limit: it whitelists the value and is not a rule.
    assert "key2_value3" not in rules
    assert config.summary() == ["domain 'test-domain': 10 rules (9 limited, 1 unlimited)"]


def test_example_config_facts() -> None:
    config = load_config([VALID / "example.yaml"])
    rules = rules_by_path(config, "rl")
    assert rules["category_account"].replaces == frozenset({"bkthomps", "fake_name"})
    assert rules["foo.bar_banned"].limits == (Limit(0, Unit.MINUTE, name="banned_limit"),)
    assert rules["foo.baz_shady"].shadow_mode
    assert rules["service_service_1"].quota_mode
    assert rules["service_service_1"].metadata == {"service_with_quota": {"name": "service_1"}}


def test_share_threshold_and_shadow_mode_corpus_facts() -> None:
    shadow = rules_by_path(load_config([VALID / "shadowmode_config.yaml"]), "test-domain")
    assert shadow["key2"].shadow_mode
    assert not shadow["key2_value2"].shadow_mode
    metadata = rules_by_path(load_config([VALID / "metadata.yaml"]), "test-domain")
    assert metadata["key1_value1.subkey1"].metadata == {"name": "service_1"}


INVALID_MESSAGES: dict[str, list[str]] = {
    "bad_limit_unit.yaml": [
        f"{{f}}: line 6, descriptors[0].rate_limit.unit: invalid rate limit unit 'foo' "
        f"(expected one of {UNITS})"
    ],
    "bad_yaml.yaml": [
        "{f}: error loading config file: line 2, column 1: "
        "found unexpected end of stream while scanning a quoted scalar"
    ],
    "duplicate_key.yaml": [
        "{f}: line 6, descriptors[1]: duplicate descriptor composite key 'key1=value1' "
        "(already at descriptors[0])"
    ],
    "empty_domain.yaml": ["{f}: line 1: config file cannot have empty domain"],
    "empty_key.yaml": ["{f}: line 3, descriptors[0]: descriptor has empty key"],
    "misspelled_key.yaml": [
        f"{{f}}: line 5, descriptors[0]: unknown key 'ratelimit' "
        f"(expected one of {DESCRIPTOR_KEYS})"
    ],
    "misspelled_key2.yaml": [
        f"{{f}}: line 7, descriptors[0].rate_limit: unknown key 'requestsperunit' "
        f"(expected one of {LIMIT_KEYS})",
        "{f}: line 6, descriptors[0].rate_limit: requests_per_unit is required",
    ],
    "non_map_list.yaml": [
        "{f}: line 3, descriptors[0]: yaml file contains list of type other than map: 'a'",
        "{f}: line 4, descriptors[1]: yaml file contains list of type other than map: 'b'",
        "{f}: line 5, descriptors[2]: yaml file contains list of type other than map: 'c'",
    ],
    "non_string_key.yaml": [
        "{f}: line 1: key is not of type string: 0.25",
        "{f}: line 1: config file cannot have empty domain",
    ],
    "replaces_empty.yaml": [
        "{f}: line 10, descriptors[0].descriptors[0].rate_limit.replaces[0]: "
        "should not have an empty replaces entry"
    ],
    "replaces_self.yaml": [
        "{f}: line 6, descriptors[0].descriptors[0]: "
        "replaces should not contain name of same descriptor: 'self'"
    ],
    "unlimited_with_unit.yaml": [
        "{f}: line 6, descriptors[0].rate_limit.unit: "
        "should not specify rate limit unit when unlimited"
    ],
    # Valid alone; see test_duplicate_domain_is_rejected_with_basic_config.
    "duplicate_domain.yaml": [],
}

# The key phrase of envoyproxy/ratelimit's message, which ours must contain.
UPSTREAM_PHRASES = {
    "bad_limit_unit.yaml": "invalid rate limit unit 'foo'",
    "bad_yaml.yaml": "error loading config file: ",
    "duplicate_key.yaml": "duplicate descriptor composite key '",
    "empty_domain.yaml": "config file cannot have empty domain",
    "empty_key.yaml": "descriptor has empty key",
    "misspelled_key.yaml": "unknown key 'ratelimit'",
    "misspelled_key2.yaml": "unknown key 'requestsperunit'",
    "non_map_list.yaml": "yaml file contains list of type other than map: ",
    "non_string_key.yaml": "key is not of type string: 0.25",
    "replaces_empty.yaml": "should not have an empty replaces entry",
    "replaces_self.yaml": "replaces should not contain name of same descriptor",
    "unlimited_with_unit.yaml": "should not specify rate limit unit when unlimited",
}


@pytest.mark.parametrize("name", _corpus(INVALID))
def test_every_invalid_compat_file_is_rejected(name: str) -> None:
    path = INVALID / name
    assert name in INVALID_MESSAGES, f"no expected message written for new corpus file {name}"
    if name == "duplicate_domain.yaml":
        assert list(load_config([path]).domains) == ["test-domain"]
        return
    errors = errors_of(path)
    assert errors == [line.format(f=path) for line in INVALID_MESSAGES[name]]
    assert any(UPSTREAM_PHRASES[name] in line for line in errors)


def test_duplicate_domain_is_rejected_with_basic_config() -> None:
    basic = VALID / "basic_config.yaml"
    duplicate = INVALID / "duplicate_domain.yaml"
    assert errors_of(basic, duplicate) == [
        f"{duplicate}: line 1: duplicate domain 'test-domain' (already defined in {basic})"
    ]


# --- our fixtures: one per error ---------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: d\nfoo: 1\n")
    assert errors_of(f) == [f"{f}: line 2: unknown key 'foo' (expected one of descriptors, domain)"]


@pytest.mark.parametrize("text", ["domain: ''\n", "domain:\n", "descriptors: []\n"])
def test_empty_domain(tmp_path: Path, text: str) -> None:
    f = write(tmp_path, text)
    assert errors_of(f) == [f"{f}: line 1: config file cannot have empty domain"]


@pytest.mark.parametrize("key_line", ["", "    key: ''\n", "    key:\n"])
def test_missing_key(tmp_path: Path, key_line: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - value: v\n"
        + key_line
        + "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    assert errors_of(f) == [f"{f}: line 3, descriptors[0]: descriptor has empty key"]


def test_duplicate_key_value_at_same_level(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            value: v
          - key: k
            value: v
          - key: k
          - key: k
          - key: parent
            descriptors:
              - key: child
                value: x
              - key: child
                value: x
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 5, descriptors[1]: duplicate descriptor composite key 'k=v' "
        "(already at descriptors[0])",
        f"{f}: line 8, descriptors[3]: duplicate descriptor composite key 'k' "
        "(already at descriptors[2])",
        f"{f}: line 13, descriptors[4].descriptors[1]: duplicate descriptor composite key "
        "'child=x' (already at descriptors[4].descriptors[0])",
    ]


def test_same_key_value_at_different_levels_is_fine(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            value: v
            rate_limit: {unit: second, requests_per_unit: 1}
            descriptors:
              - key: k
                value: v
                rate_limit: {unit: second, requests_per_unit: 2}
          - key: other
            descriptors:
              - key: k
                value: v
                rate_limit: {unit: second, requests_per_unit: 3}
        """,
    )
    rules = rules_by_path(load_config([f]), "d")
    assert {path: rule.limits[0].requests_per_unit for path, rule in rules.items()} == {
        "k_v": 1,
        "k_v.k_v": 2,
        "other.k_v": 3,
    }


def test_same_key_with_and_without_value_is_fine(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: k
            value: v
            rate_limit: {unit: second, requests_per_unit: 2}
        """,
    )
    assert set(rules_by_path(load_config([f]), "d")) == {"k", "k_v"}


def test_duplicate_mapping_key_inside_one_map(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        domain: e
        descriptors:
          - key: k
            value: a
            value: b
            rate_limit:
              unit: second
              unit: minute
              requests_per_unit: 1
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 2: key 'domain' is given twice",
        f"{f}: line 6, descriptors[0]: key 'value' is given twice",
        f"{f}: line 9, descriptors[0].rate_limit: key 'unit' is given twice",
    ]


def test_non_string_key(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            1: x
            rate_limit: {unit: second, requests_per_unit: 1, true: 2}
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0]: key is not of type string: 1",
        f"{f}: line 5, descriptors[0].rate_limit: key is not of type string: true",
    ]


@pytest.mark.parametrize(
    ("value", "shown"), [("foo", "'foo'"), ("{key: k}", "a map"), ("7", "'7'")]
)
def test_descriptors_not_a_list(tmp_path: Path, value: str, shown: str) -> None:
    f = write(tmp_path, f"domain: d\ndescriptors: {value}\n")
    assert errors_of(f) == [
        f"{f}: line 2, descriptors: expected a list of descriptors, got {shown}"
    ]


def test_nested_descriptors_not_a_list(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: d\ndescriptors:\n  - key: k\n    descriptors: foo\n")
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].descriptors: expected a list of descriptors, got 'foo'"
    ]


def test_empty_descriptors_are_fine(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: d\ndescriptors:\n")
    config = load_config([f])
    assert config.domains["d"].rules == ()
    assert config.summary() == ["domain 'd': 0 rules (0 limited, 0 unlimited)"]


def test_bad_unit(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: fortnight, requests_per_unit: 1}
          - key: j
            rate_limit: {requests_per_unit: 1}
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight' "
        f"(expected one of {UNITS})",
        f"{f}: line 6, descriptors[1].rate_limit: rate limit unit is required (one of {UNITS})",
    ]


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("SECOND", Unit.SECOND),
        ("Minute", Unit.MINUTE),
        ("hOuR", Unit.HOUR),
        ("day", Unit.DAY),
        ("WEEK", Unit.WEEK),
        ("Month", Unit.MONTH),
        ("year", Unit.YEAR),
    ],
)
def test_units_are_case_insensitive(tmp_path: Path, text: str, unit: Unit) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        f"    rate_limit: {{unit: {text}, requests_per_unit: 3}}\n",
    )
    assert one_rule(f).limits == (Limit(3, unit),)


def test_unit_with_unlimited(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit:\n      unlimited: true\n      unit: second\n",
    )
    assert errors_of(f) == [
        f"{f}: line 6, descriptors[0].rate_limit.unit: "
        "should not specify rate limit unit when unlimited"
    ]


@pytest.mark.parametrize(
    ("extra", "value"), [("algorithm", "token_bucket"), ("burst", "5"), ("unit_multiplier", "2")]
)
def test_unlimited_with_algorithm_and_friends(tmp_path: Path, extra: str, value: str) -> None:
    f = write(
        tmp_path,
        f"domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n"
        f"      {extra}: {value}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 6, descriptors[0].rate_limit.{extra}: should not specify {extra} when unlimited"
    ]


def test_unlimited_false_is_an_ordinary_limit(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unlimited: false, unit: second, requests_per_unit: 3}\n",
    )
    rule = one_rule(f)
    assert not rule.unlimited
    assert rule.limits == (Limit(3, Unit.SECOND),)


def test_missing_requests_per_unit(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n")
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit: requests_per_unit is required"
    ]


@pytest.mark.parametrize("number", ["-1", "4294967296"])
def test_requests_per_unit_out_of_range(tmp_path: Path, number: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        f"    rate_limit: {{unit: second, requests_per_unit: {number}}}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.requests_per_unit: "
        f"must be between 0 and 4294967295, got {number}"
    ]


def test_requests_per_unit_zero_and_maximum_are_fine(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: banned
            rate_limit: {unit: second, requests_per_unit: 0}
          - key: huge
            rate_limit: {unit: second, requests_per_unit: 4294967295}
        """,
    )
    rules = rules_by_path(load_config([f]), "d")
    assert rules["banned"].limits[0].requests_per_unit == 0
    assert rules["huge"].limits[0].requests_per_unit == 4294967295


@pytest.mark.parametrize(
    ("value", "shown"),
    [("2.5", "'2.5'"), ("'5'", "'5'"), ("five", "'five'"), ("true", "'true'"), ("[1]", "a list")],
)
def test_requests_per_unit_not_an_integer(tmp_path: Path, value: str, shown: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        f"    rate_limit: {{unit: second, requests_per_unit: {value}}}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.requests_per_unit: "
        f"expected a whole number, got {shown}"
    ]


def test_unit_multiplier_zero(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: second, requests_per_unit: 1, unit_multiplier: 0}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.unit_multiplier: "
        "must be between 1 and 4294967295, got 0"
    ]


def test_unit_multiplier_gives_the_period(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: minute, unit_multiplier: 15, requests_per_unit: 5}\n",
    )
    (limit,) = one_rule(f).limits
    assert limit == Limit(5, Unit.MINUTE, unit_multiplier=15)
    assert limit.period == 900


def test_unknown_algorithm(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky_bucket}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.algorithm: invalid algorithm 'leaky_bucket' "
        "(expected one of fixed_window, sliding_window, token_bucket, gcra, concurrency)"
    ]


@pytest.mark.parametrize(
    "algorithm", ["", ", algorithm: fixed_window", ", algorithm: sliding_window"]
)
def test_burst_needs_token_bucket(tmp_path: Path, algorithm: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        f"    rate_limit: {{unit: second, requests_per_unit: 1, burst: 5{algorithm}}}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.burst: burst is only for algorithm token_bucket or gcra"
    ]


def test_token_bucket_with_burst_and_algorithm_case(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: second, requests_per_unit: 1, algorithm: Token_Bucket, burst: 5}\n",
    )
    (limit,) = one_rule(f).limits
    assert limit.algorithm is Algorithm.TOKEN_BUCKET
    assert limit.burst == 5
    assert limit.capacity == 5


def test_rate_limit_and_rate_limits_both_given(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 1}
            rate_limits:
              - {unit: minute, requests_per_unit: 10}
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 3, descriptors[0]: give either rate_limit or rate_limits, not both"
    ]


def test_rate_limits_empty(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: d\ndescriptors:\n  - key: k\n    rate_limits: []\n")
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limits: expected a non-empty list of limits, got an empty list"
    ]


def test_rate_limits_same_algorithm_and_period(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limits:
              - {unit: minute, requests_per_unit: 1}
              - {unit: second, unit_multiplier: 60, requests_per_unit: 60}
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 6, descriptors[0].rate_limits[1]: a second fixed_window limit over 60s "
        "(the same as descriptors[0].rate_limits[0]); merge them into one"
    ]


def test_rate_limits_several_limits(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limits:
              - {name: burst, unit: second, requests_per_unit: 10}
              - {name: sustained, unit: minute, requests_per_unit: 100}
              - {unit: minute, requests_per_unit: 50, algorithm: sliding_window}
        """,
    )
    rule = one_rule(f)
    assert rule.limits == (
        Limit(10, Unit.SECOND, name="burst"),
        Limit(100, Unit.MINUTE, name="sustained"),
        Limit(50, Unit.MINUTE, algorithm=Algorithm.SLIDING_WINDOW),
    )
    assert rule.names == frozenset({"burst", "sustained"})


@pytest.mark.parametrize("entry", ["- name:", "- name: ''", "- {}"])
def test_replaces_empty_name(tmp_path: Path, entry: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
        f"      requests_per_unit: 1\n      replaces:\n        {entry}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 8, descriptors[0].rate_limit.replaces[0]: "
        "should not have an empty replaces entry"
    ]


def test_replaces_self(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limit:
              name: mine
              unit: second
              requests_per_unit: 1
              replaces: [{name: mine}]
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 3, descriptors[0]: replaces should not contain name of same descriptor: 'mine'"
    ]


def test_replaces_self_via_rate_limits_names(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limits:
              - {name: a, unit: second, requests_per_unit: 1}
              - {name: b, unit: minute, requests_per_unit: 9, replaces: [{name: a}]}
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 3, descriptors[0]: replaces should not contain name of same descriptor: 'a'"
    ]


def test_replaces_another_rule(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        descriptors:
          - key: k
            rate_limit: {name: a, unit: second, requests_per_unit: 1}
          - key: j
            rate_limit: {unit: second, requests_per_unit: 5, replaces: [{name: a}, {name: b}]}
        """,
    )
    assert rules_by_path(load_config([f]), "d")["j"].replaces == frozenset({"a", "b"})


@pytest.mark.parametrize("value", ["    value: exact\n", ""])
def test_share_threshold_without_wildcard(tmp_path: Path, value: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        + value
        + "    share_threshold: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 3, descriptors[0].share_threshold: share_threshold needs a wildcard value"
    ]


def test_bad_flag_value(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: sometimes\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].shadow_mode: expected true or false, got 'sometimes'"
    ]


def test_rate_limit_not_a_map(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n  - key: j\n    rate_limit: 5\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit: expected a map, got nothing",
        f"{f}: line 6, descriptors[1].rate_limit: expected a map, got '5'",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "domain: d\n  descriptors: x\n",
            "line 2, column 14: mapping values are not allowed here",
        ),
        (
            "domain: [a\n",
            "line 2, column 1: expected ',' or ']', but got '<stream end>' "
            "while parsing a flow sequence",
        ),
        (
            "domain: d\ndescriptors:\n\t- key: k\n",
            "line 3, column 1: found character '\\t' that cannot start any token "
            "while scanning for the next token",
        ),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path, text)
    assert errors_of(f) == [f"{f}: error loading config file: {message}"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    f = write(tmp_path, text)
    assert errors_of(f) == [f"{f}: config file cannot have empty domain"]


@pytest.mark.parametrize(("text", "shown"), [("- a\n- b\n", "a list"), ("hello\n", "'hello'")])
def test_document_not_a_map(tmp_path: Path, text: str, shown: str) -> None:
    f = write(tmp_path, text)
    assert errors_of(f) == [f"{f}: line 1: expected a map, got {shown}"]


def test_several_documents_in_one_file(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: a\n---\ndomain: b\n---\ndomain: a\n")
    assert errors_of(f) == [f"{f}: line 5: duplicate domain 'a' (already defined in {f})"]
    g = write(tmp_path, "domain: a\n---\ndomain: b\n", "two.yaml")
    assert sorted(load_config([g]).domains) == ["a", "b"]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert errors_of(missing) == [f"{missing}: cannot read config file: No such file or directory"]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"\xff\xfedomain: d\n")
    assert errors_of(f) == [
        f"{f}: cannot read config file: not UTF-8 text (at byte 0: invalid start byte)"
    ]


def test_unreadable_file_does_not_hide_other_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    bad = write(tmp_path, "domain: d\nfoo: 1\n", "bad.yaml")
    assert errors_of(missing, bad) == [
        f"{missing}: cannot read config file: No such file or directory",
        f"{bad}: line 2: unknown key 'foo' (expected one of descriptors, domain)",
    ]


def test_directory_given_directly_is_read_as_a_directory(tmp_path: Path) -> None:
    # A directory named like a YAML file is still a directory: its files are loaded.
    folder = tmp_path / "looks-like.yaml"
    folder.mkdir()
    write(folder, "domain: inner\n", "inner.yaml")
    assert list(load_config([folder]).domains) == ["inner"]


def test_directory_loads_all_files_and_skips_hidden_and_non_yaml(tmp_path: Path) -> None:
    write(tmp_path, "domain: b\n", "b.yaml")
    write(tmp_path, "domain: a\n", "a.yml")
    write(tmp_path, "domain: hidden\n", ".hidden.yaml")
    write(tmp_path, "not: yaml: at: all: [\n", "README.md")
    write(tmp_path, "domain: text\n", "notes.txt")
    write(tmp_path, "domain: backup\n", "c.yaml.bak")
    (tmp_path / "sub.yaml").mkdir()
    write(tmp_path / "sub.yaml", "domain: nested\n", "nested.yaml")
    hidden_dir = tmp_path / "..data"
    hidden_dir.mkdir()
    write(hidden_dir, "domain: configmap\n", "x.yaml")
    config = load_config([tmp_path])
    assert sorted(config.domains) == ["a", "b"]
    assert config.sources == (str(tmp_path / "a.yml"), str(tmp_path / "b.yaml"))


def test_directory_and_file_together_are_one_config(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    write(folder, "domain: a\n", "a.yaml")
    extra = write(tmp_path, "domain: a\n", "extra.yaml")
    assert errors_of(folder, extra) == [
        f"{extra}: line 1: duplicate domain 'a' (already defined in {folder / 'a.yaml'})"
    ]


def test_directory_with_no_yaml_files(tmp_path: Path) -> None:
    write(tmp_path, "domain: d\n", "notes.txt")
    write(tmp_path, "domain: d\n", ".hidden.yaml")
    assert errors_of(tmp_path) == [f"{tmp_path}: no config files found"]


def test_empty_directory(tmp_path: Path) -> None:
    assert errors_of(tmp_path) == [f"{tmp_path}: no config files found"]


def test_several_errors_in_one_file_are_all_reported(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """\
        domain: d
        foo: 1
        descriptors:
          - value: v
          - key: k
            rate_limit: {unit: parsec, requests_per_unit: -3}
          - key: k2
            rate_limit: {unlimited: true, unit: second}
          - key: k3
            descriptors:
              - key: deep
                rate_limit: {unit: second, requests_per_unit: 1, algorithm: nope}
        """,
    )
    assert errors_of(f) == [
        f"{f}: line 2: unknown key 'foo' (expected one of descriptors, domain)",
        f"{f}: line 4, descriptors[0]: descriptor has empty key",
        f"{f}: line 6, descriptors[1].rate_limit.unit: invalid rate limit unit 'parsec' "
        f"(expected one of {UNITS})",
        f"{f}: line 6, descriptors[1].rate_limit.requests_per_unit: "
        "must be between 0 and 4294967295, got -3",
        f"{f}: line 8, descriptors[2].rate_limit.unit: "
        "should not specify rate limit unit when unlimited",
        f"{f}: line 12, descriptors[3].descriptors[0].rate_limit.algorithm: "
        "invalid algorithm 'nope' (expected one of fixed_window, sliding_window, token_bucket, gcra, concurrency)",
    ]


def test_errors_in_several_files_are_all_reported(tmp_path: Path) -> None:
    one = write(tmp_path, "domain: ''\n", "one.yaml")
    two = write(tmp_path, "domain: d\ndescriptors: x\n", "two.yaml")
    assert errors_of(tmp_path) == [
        f"{one}: line 1: config file cannot have empty domain",
        f"{two}: line 2, descriptors: expected a list of descriptors, got 'x'",
    ]


def test_null_value_means_key_only(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    value:\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    config = load_config([f])
    assert set(rules_by_path(config, "d")) == {"k"}
    assert config.match("d", (("k", "anything"),)) is not None


def test_scalar_keys_and_values_keep_their_text(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: port\n    value: 0443\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    config = load_config([f])
    assert config.match("d", (("port", "0443"),)) is not None
    assert config.match("d", (("port", "443"),)) is None


# --- found as bugs, now fixed ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["[a, b]", "{x: y}"])
def test_non_scalar_value_is_rejected(tmp_path: Path, value: str) -> None:
    f = write(
        tmp_path,
        f"domain: d\ndescriptors:\n  - key: k\n    value: {value}\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    errors = errors_of(f)
    assert len(errors) == 1
    assert errors[0].startswith(f"{f}: line 4, descriptors[0].value: ")


def test_empty_string_value_means_key_only(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    value: ''\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    config = load_config([f])
    assert set(rules_by_path(config, "d")) == {"k"}
    assert config.match("d", (("k", "anything"),)) is not None


def test_trailing_document_separator_is_ignored(tmp_path: Path) -> None:
    f = write(tmp_path, "domain: a\n---\n")
    assert list(load_config([f]).domains) == ["a"]


def test_only_a_document_separator_is_an_empty_file(tmp_path: Path) -> None:
    f = write(tmp_path, "---\n")
    assert errors_of(f) == [f"{f}: config file cannot have empty domain"]


@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket"])
def test_window_first_hit_needs_a_fixed_window(tmp_path: Path, algorithm: str) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: second, requests_per_unit: 1, window: first_hit, "
        f"algorithm: {algorithm}}}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.window: window is only for algorithm fixed_window"
    ]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("window: sliding", "invalid window 'sliding' (expected one of aligned, first_hit)"),
        ("charge: sometimes", "invalid charge 'sometimes' (expected one of if_fits, always)"),
    ],
)
def test_window_and_charge_values_are_checked(tmp_path: Path, field: str, message: str) -> None:
    f = write(
        tmp_path,
        f"domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: 1, {field}}}\n",
    )
    name = field.split(":")[0]
    assert errors_of(f) == [f"{f}: line 4, descriptors[0].rate_limit.{name}: {message}"]


def test_charge_always_needs_a_limit_that_pays_the_debt_off(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n"
        "    rate_limit: {unit: second, requests_per_unit: 0, charge: always}\n",
    )
    assert errors_of(f) == [
        f"{f}: line 4, descriptors[0].rate_limit.charge: charge: always needs requests_per_unit "
        "of at least 1 (what pays a debt off)"
    ]


def test_on_backend_failure_is_checked_and_described(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    on_backend_failure: maybe\n"
        "    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    assert errors_of(bad) == [
        f"{bad}: line 4, descriptors[0].on_backend_failure: invalid on_backend_failure 'maybe' "
        "(expected one of error, allow, deny, local)"
    ]
    good = config_from_texts(
        [
            (
                "t.yaml",
                "domain: d\ndescriptors:\n  - key: k\n    on_backend_failure: deny\n"
                "    rate_limit: {unit: second, requests_per_unit: 1}\n",
            )
        ]
    )
    assert good.describe_rules() == ["d.k: 1 per second (fixed_window) [on backend failure: deny]"]


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        (
            "unit: hour, calendar: true",
            "calendar",
            "calendar: true needs a unit of day, week, month, year",
        ),
        ("unit: day, calendar: 1", "calendar", "expected true or false, got '1'"),
        ("unit: day, time_zone: UTC", "time_zone", "time_zone needs calendar: true"),
        (
            "unit: month, calendar: true, time_zone: Europe/Pariss",
            "time_zone",
            "unknown time zone 'Europe/Pariss' (an IANA name such as Europe/Paris or UTC)",
        ),
        (
            "unit: month, calendar: true, time_zone: ../../etc/passwd",
            "time_zone",
            "unknown time zone '../../etc/passwd' (an IANA name such as Europe/Paris or UTC)",
        ),
        (
            "unit: month, calendar: true, algorithm: token_bucket",
            "calendar",
            "calendar is only for an aligned fixed_window",
        ),
        (
            "unit: day, calendar: true, window: first_hit",
            "calendar",
            "calendar is only for an aligned fixed_window",
        ),
        (
            "unit: day, calendar: true, unit_multiplier: 2",
            "calendar",
            "calendar: true needs unit_multiplier 1",
        ),
    ],
)
def test_calendar_keys_are_checked(tmp_path: Path, fields: str, where: str, message: str) -> None:
    f = write(
        tmp_path,
        f"domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{requests_per_unit: 1, {fields}}}\n",
    )
    assert errors_of(f) == [f"{f}: line 4, descriptors[0].rate_limit.{where}: {message}"]


def test_calendar_windows_are_described_and_keyed_apart(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n"
        "      - {unit: month, requests_per_unit: 10000, calendar: true, time_zone: Europe/Paris}\n"
        "      - {unit: month, requests_per_unit: 20000}\n"
        "      - {unit: year, requests_per_unit: 90000, calendar: true}\n",
    )
    config = load_config([f])
    assert config.describe_rules() == [
        "d.k: 10000 per month (fixed_window, calendar Europe/Paris) and 20000 per month "
        "(fixed_window) and 90000 per year (fixed_window, calendar UTC)"
    ]
    limits = one_rule(f).limits
    assert len({limit.counter_id for limit in limits}) == 3


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ("algorithm: concurrency", "", "max_in_flight is required for algorithm concurrency"),
        (
            "algorithm: concurrency, max_in_flight: 0",
            ".max_in_flight",
            "must be between 1 and 4294967295, got 0",
        ),
        (
            "algorithm: concurrency, max_in_flight: 2, lease_ttl_s: 0",
            ".lease_ttl_s",
            "expected seconds, more than 0 and at most 86400, got '0'",
        ),
        (
            "algorithm: concurrency, max_in_flight: 2, lease_ttl_s: 86401",
            ".lease_ttl_s",
            "expected seconds, more than 0 and at most 86400, got '86401'",
        ),
        (
            "algorithm: concurrency, max_in_flight: 2, lease_ttl_s: soon",
            ".lease_ttl_s",
            "expected seconds, more than 0 and at most 86400, got 'soon'",
        ),
        (
            "algorithm: concurrency, max_in_flight: 2, unit: second",
            "",
            "unknown key 'unit' (expected one of algorithm, lease_ttl_s, max_in_flight, name)",
        ),
        (
            "unit: second, requests_per_unit: 1, lease_ttl_s: 5",
            ".lease_ttl_s",
            "lease_ttl_s is only for algorithm concurrency",
        ),
    ],
)
def test_concurrency_keys_are_checked(
    tmp_path: Path, fields: str, where: str, message: str
) -> None:
    f = write(tmp_path, f"domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{{fields}}}\n")
    assert errors_of(f) == [f"{f}: line 4, descriptors[0].rate_limit{where}: {message}"]


def test_a_rule_has_one_concurrency_limit_and_describes_it(tmp_path: Path) -> None:
    two = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n"
        "      - {algorithm: concurrency, max_in_flight: 1}\n"
        "      - {algorithm: concurrency, max_in_flight: 2}\n",
    )
    assert errors_of(two) == [
        f"{two}: line 6, descriptors[0].rate_limits[1]: a second concurrency limit; "
        "a rule has one at most"
    ]
    good = write(
        tmp_path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n"
        "      - {algorithm: concurrency, max_in_flight: 4, lease_ttl_s: 90, name: inflight}\n"
        "      - {unit: minute, requests_per_unit: 100}\n",
        name="good.yaml",
    )
    assert load_config([good]).describe_rules() == [
        "d.k: 100 per minute (fixed_window) and 4 in flight (concurrency, leases of 90 s) "
        "name=inflight"
    ]
