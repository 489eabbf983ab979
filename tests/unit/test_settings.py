"""Settings are checked at startup: a value out of range stops `serve` with exit 2 and says
which setting, and what it got."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ratelimitd.cli import main
from ratelimitd.errors import ConfigError
from ratelimitd.settings import RANGES, Settings


def problems(**environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    return caught.value.errors


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_a_port_outside_the_tcp_range_is_refused(port: str) -> None:
    assert problems(RATELIMITD_GRPC_PORT=port) == [
        "RATELIMITD_GRPC_PORT (--grpc-port): must be a port from 1 to 65535 "
        f"(0, any free port, is for tests), got {port}"
    ]
    assert problems(RATELIMITD_HTTP_PORT=port)[0].startswith("RATELIMITD_HTTP_PORT (--http-port)")


def test_ports_at_the_edges_and_zero_are_allowed() -> None:
    assert Settings.from_env({"RATELIMITD_GRPC_PORT": "65535", "RATELIMITD_HTTP_PORT": "1"})
    assert Settings.from_env({"RATELIMITD_GRPC_PORT": "0"}).grpc_port == 0


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("RATELIMITD_REDIS_TIMEOUT_MS", "-5", "must be above 0, got -5"),
        ("RATELIMITD_REDIS_TIMEOUT_MS", "0", "must be above 0, got 0"),
        ("RATELIMITD_SHUTDOWN_GRACE_S", "-1", "must be 0 or more, got -1.0"),
        ("RATELIMITD_HEALTH_INTERVAL_S", "0", "must be above 0, got 0.0"),
        ("RATELIMITD_HEALTH_INTERVAL_S", "nan", "must be above 0, got nan"),
        ("RATELIMITD_CONFIG_POLL_S", "-0.5", "must be 0 or more (0: no file watch), got -0.5"),
        ("RATELIMITD_CONFIG_POLL_S", "inf", "must be 0 or more (0: no file watch), got inf"),
        ("RATELIMITD_NEAR_LIMIT_RATIO", "1.5", "must be above 0 and at most 1, got 1.5"),
        ("RATELIMITD_REDIS_BATCH_DELAY_US", "-1", "must be from 0 to 1000000 (one second), got -1"),
        ("RATELIMITD_MAX_MESSAGE_BYTES", "0", "must be from 1 to 2147483647, got 0"),
        ("RATELIMITD_MAX_DESCRIPTORS", "0", "must be at least 1, got 0"),
        ("RATELIMITD_DETAILED_METRIC_MAX_VALUES", "-3", "must be 0 or more, got -3"),
    ],
)
def test_numeric_settings_out_of_range(variable: str, value: str, expected: str) -> None:
    assert problems(**{variable: value}) == [f"{variable}: {expected}"]


def test_zero_workers_names_the_flag_too() -> None:
    assert problems(RATELIMITD_WORKERS="0") == [
        "RATELIMITD_WORKERS (--workers): must be from 1 to 1024, got 0"
    ]


def test_every_range_names_a_numeric_setting_and_holds_its_default() -> None:
    defaults = Settings()
    for name, allowed in RANGES.items():
        value = getattr(defaults, name)
        assert isinstance(value, int | float), name
        assert allowed.holds(value), f"the default of {name} is out of its own range"


def test_serve_with_an_out_of_range_port_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--config", "unused.yaml", "--grpc-port", "99999"]) == 2
    err = capsys.readouterr().err
    assert "RATELIMITD_GRPC_PORT (--grpc-port): must be a port from 1 to 65535" in err
    assert "got 99999" in err


def test_the_http_port_does_not_wrap_around_either() -> None:
    """Before the check, 65536 + 8080 listened on 8080: the process must not start at all."""
    result = subprocess.run(
        [sys.executable, "-m", "ratelimitd", "serve", "--config", "x.yaml", "--http-port", "73616"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "RATELIMITD_HTTP_PORT (--http-port)" in result.stderr
    assert "got 73616" in result.stderr
    assert "Traceback" not in result.stderr
