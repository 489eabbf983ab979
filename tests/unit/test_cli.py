"""`ratelimitd check-config`: exit status, summary on stdout, `FILE: ...` errors on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ratelimitd.cli import main

REPO = Path(__file__).resolve().parents[2]
COMPAT = REPO.parent / "shared" / "compat" / "envoyproxy-ratelimit"


def corpus(*parts: str) -> str:
    assert COMPAT.is_dir(), (
        f"compat corpus not found at {COMPAT} (expected ../shared beside the repo)"
    )
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
