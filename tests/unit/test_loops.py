"""RATELIMITD_EVENT_LOOP: which loop `serve` runs on, and the errors for a bad choice."""

from __future__ import annotations

import sys

import pytest

from ratelimitd import loops
from ratelimitd.errors import ConfigError
from ratelimitd.settings import Settings


def name_of(choice: str) -> str:
    loop = loops.loop_factory(choice)()
    try:
        return loops.loop_name(loop)
    finally:
        loop.close()


def test_auto_takes_uvloop_when_it_is_installed() -> None:
    assert loops.uvloop_available()  # a dependency of the package on this platform
    assert name_of("auto") == "uvloop"
    assert name_of("uvloop") == "uvloop"


def test_asyncio_when_asked_or_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert name_of("asyncio") == "asyncio"
    monkeypatch.setattr(loops, "uvloop_available", lambda: False)
    assert name_of("auto") == "asyncio"


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    with pytest.raises(ConfigError) as caught:
        loops.loop_factory("uvloop")
    assert caught.value.errors == [
        "RATELIMITD_EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop)"
    ]


def test_an_unknown_loop_is_rejected_with_the_choices() -> None:
    expected = "RATELIMITD_EVENT_LOOP: expected one of auto, uvloop, asyncio, got 'tokio'"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RATELIMITD_EVENT_LOOP": "tokio"})
    assert caught.value.errors == [expected]
    with pytest.raises(ConfigError) as caught:
        loops.loop_factory("tokio")
    assert caught.value.errors == [expected]
