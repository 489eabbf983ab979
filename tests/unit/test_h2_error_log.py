"""Connection errors are logged in full once, then as one summary line per period: a flood of
bad connections must not become a flood of log lines."""

from __future__ import annotations

import pytest
import structlog

from ratelimitd.transport.h2 import limits
from ratelimitd.transport.h2.limits import ErrorLog


def test_the_first_error_in_full_then_one_summary_per_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    errors = ErrorLog(period_s=10.0)
    with structlog.testing.capture_logs() as logged:
        errors.closing("ipv4:10.0.0.1:1", 11, "too many PINGs")
        for _ in range(5_000):  # within the period: nothing is written
            errors.closing("ipv4:10.0.0.1:2", 11, "too many PINGs")
        errors.closing("ipv4:10.0.0.1:3", 1, "a malformed RST_STREAM")
        assert len(logged) == 1
        now[0] += 10.5
        errors.closing("ipv4:10.0.0.1:4", 11, "too many resets")
    assert [line["event"] for line in logged] == [
        "closing an HTTP/2 connection",
        "more HTTP/2 connections closed for errors",
        "closing an HTTP/2 connection",
    ]
    summary = logged[1]
    assert summary["count"] == 5_001
    assert summary["reasons"] == {"too many PINGs": 5_000, "a malformed RST_STREAM": 1}
    assert logged[2]["reason"] == "too many resets"
