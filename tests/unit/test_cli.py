"""`ratelimitd check-config`: exit status, summary on stdout, `FILE: ...` errors on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ratelimitd.cli import main
from tests.helpers import COMPAT

REPO = Path(__file__).resolve().parents[2]


def corpus(*parts: str) -> str:
    return str(COMPAT.joinpath(*parts))


def test_good_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", corpus("valid", "basic_config.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out == "domain 'test-domain': 10 rules (9 limited, 1 unlimited)\n"
    assert err == ""


def test_one_line_per_domain_sorted(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [
        corpus("valid", "integration_basic.yaml"),
        corpus("valid", "config.yaml"),
        corpus("valid", "integration_another.yaml"),
    ]
    assert main(["check-config", *paths]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "domain 'another': 6 rules (6 limited, 0 unlimited)",
        "domain 'basic': 3 rules (3 limited, 0 unlimited)",
        "domain 'mongo_cps': 2 rules (2 limited, 0 unlimited)",
    ]
    assert err == ""


def test_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(
        "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n"
    )
    (tmp_path / "b.yml").write_text("domain: b\n")
    (tmp_path / ".hidden.yaml").write_text("not valid: [\n")
    assert main(["check-config", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "domain 'a': 1 rules (0 limited, 1 unlimited)",
        "domain 'b': 0 rules (0 limited, 0 unlimited)",
    ]
    assert err == ""


def test_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = corpus("invalid", "bad_limit_unit.yaml")
    assert main(["check-config", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}: line 6, descriptors[0].rate_limit.unit: invalid rate limit unit 'foo' "
        "(expected one of second, minute, hour, day, month, year, week)\n"
    )


def test_every_error_on_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\nfoo: 1\ndescriptors:\n  - value: v\n")
    missing = tmp_path / "missing.yaml"
    assert main(["check-config", str(bad), str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{missing}: cannot read config file: No such file or directory",
        f"{bad}: line 2: unknown key 'foo' (expected one of descriptors, domain)",
        f"{bad}: line 4, descriptors[0]: descriptor has empty key",
    ]


def test_paths_are_loaded_together(capsys: pytest.CaptureFixture[str]) -> None:
    basic = corpus("valid", "basic_config.yaml")
    duplicate = corpus("invalid", "duplicate_domain.yaml")
    assert main(["check-config", duplicate]) == 0
    capsys.readouterr()
    assert main(["check-config", basic, duplicate]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == f"{duplicate}: line 1: duplicate domain 'test-domain' (already defined in {basic})\n"
    )


def test_no_paths_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "the following arguments are required: paths" in capsys.readouterr().err


def test_console_entry_point_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratelimitd", "check-config", "deploy/config/example.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "domain 'edge': 8 rules (6 limited, 2 unlimited)\n"
    assert result.stderr == ""


def test_top_level_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "`" not in out
    assert "serve" in out and "check-config" in out and "query" in out


def test_a_missing_config_says_where_it_looked_and_how_to_set_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "ratelimitd", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATELIMITD_CONFIG": str(missing)},
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"ratelimitd: no config at {missing}: give the path of a YAML file or directory "
        "with --config PATH or RATELIMITD_CONFIG"
    )
    assert "Traceback" not in result.stderr


def test_the_default_config_path_is_named_when_nothing_sets_one() -> None:
    assert not Path("/etc/ratelimitd/config").exists(), "needs a machine without the default"
    env = {k: v for k, v in os.environ.items() if k != "RATELIMITD_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "ratelimitd", "serve", "--grpc-port", "0", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "no config at /etc/ratelimitd/config" in result.stderr
    assert "--config PATH or RATELIMITD_CONFIG" in result.stderr
