"""`${VAR}` and `${VAR:-default}` in the YAML, expanded at load and at reload (issue 21, item 7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ratelimitd.config import RateLimitConfig
from ratelimitd.config.loader import config_from_texts
from ratelimitd.config.reloader import ConfigReloader
from ratelimitd.errors import ConfigError
from ratelimitd.model import Unit

LOGIN = """\
domain: auth
descriptors:
  - key: path
    value: ${LOGIN_PATH:-/login}
    rate_limit:
      unit: ${LOGIN_UNIT:-minute}
      requests_per_unit: ${LOGIN_LIMIT:-5}
  - key: tenant
    value: "tier-${TIER}"
    rate_limit: {unit: hour, requests_per_unit: "${TIER_LIMIT}"}
"""


def load(text: str, **environ: str) -> RateLimitConfig:
    return config_from_texts([("rules.yaml", text)], environ=environ)


def rules(config: RateLimitConfig) -> dict[str, tuple[int, Unit]]:
    return {
        rule.path: (rule.limits[0].requests_per_unit, rule.limits[0].unit)
        for rule in config.domains["auth"].rules
    }


def test_values_and_defaults_come_from_the_environment() -> None:
    config = load(LOGIN, TIER="gold", TIER_LIMIT="100", LOGIN_LIMIT="10")
    assert rules(config) == {
        "path_/login": (10, Unit.MINUTE),
        "tenant_tier-gold": (100, Unit.HOUR),
    }
    config = load(LOGIN, TIER="free", TIER_LIMIT="7", LOGIN_UNIT="second", LOGIN_PATH="/auth")
    assert rules(config) == {"path_/auth": (5, Unit.SECOND), "tenant_tier-free": (7, Unit.HOUR)}


def test_an_unset_variable_without_a_default_is_an_error_that_names_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load(LOGIN, TIER="gold")
    assert caught.value.errors == [
        "rules.yaml: line 10: environment variable 'TIER_LIMIT' is not set "
        "(write ${TIER_LIMIT:-default} to give a default)"
    ]


def test_a_malformed_reference_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load("domain: auth\ndescriptors:\n  - key: a\n    value: ${1X}\n")
    assert caught.value.errors == [
        "rules.yaml: line 4: malformed reference '${1X}' "
        "(write ${NAME} or ${NAME:-default}, or $$ for a literal $)"
    ]


def test_a_value_cannot_inject_yaml_structure_and_dollars_escape() -> None:
    text = (
        "domain: auth\ndescriptors:\n  - key: a\n    value: ${V}$${NOT}\n"
        "    rate_limit: {unit: hour, requests_per_unit: 1}\n"
    )
    config = load(text, V="x}\n  - key: b")
    (rule,) = config.domains["auth"].rules
    assert rule.path == "a_x}\n  - key: b${NOT}"


def test_a_bad_expanded_value_is_reported_like_a_bad_literal() -> None:
    with pytest.raises(ConfigError) as caught:
        load(LOGIN, TIER="gold", TIER_LIMIT="lots")
    assert caught.value.errors == [
        "rules.yaml: line 10, descriptors[1].rate_limit.requests_per_unit: "
        "expected a whole number, got 'lots'"
    ]


def test_the_values_read_are_part_of_the_content_hash() -> None:
    one = load(LOGIN, TIER="gold", TIER_LIMIT="100")
    same = load(LOGIN, TIER="gold", TIER_LIMIT="100")
    other = load(LOGIN, TIER="gold", TIER_LIMIT="200")
    assert one.content_hash == same.content_hash != other.content_hash


def test_a_reload_reads_the_environment_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules.yaml").write_text(LOGIN)
    monkeypatch.setenv("TIER", "gold")
    monkeypatch.setenv("TIER_LIMIT", "100")
    applied: list[RateLimitConfig] = []
    reloader = ConfigReloader([tmp_path], applied.append)
    monkeypatch.setenv("TIER_LIMIT", "300")
    assert reloader.reload("SIGHUP")
    assert rules(applied[-1])["tenant_tier-gold"] == (300, Unit.HOUR)
    monkeypatch.delenv("TIER_LIMIT")
    assert not reloader.reload("SIGHUP")  # refused; the old config keeps serving
    assert len(applied) == 1


def test_check_config_names_the_unset_variable(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(LOGIN)
    run = subprocess.run(
        [sys.executable, "-m", "ratelimitd", "check-config", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"TIER_LIMIT": "3", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert "environment variable 'TIER' is not set" in run.stderr + run.stdout
