"""Small builders shared by the tests."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from ratelimitd.config import RateLimitConfig, config_from_texts
from ratelimitd.model import Descriptor, Entry, Request

# envoyproxy/ratelimit's own config files (Apache-2.0; see its README.md), as our test data.
COMPAT = Path(__file__).resolve().parent / "data" / "envoyproxy-ratelimit"


def config(text: str, name: str = "test.yaml") -> RateLimitConfig:
    return config_from_texts([(name, textwrap.dedent(text))])


def request(domain: str, *descriptors: list[Entry] | Descriptor, hits: int = 1) -> Request:
    built = tuple(
        d if isinstance(d, Descriptor) else Descriptor(entries=tuple(d)) for d in descriptors
    )
    return Request(domain=domain, descriptors=built, hits_addend=hits)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Waits, polling, for `condition()` to hold; fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.005)


async def away_from_window_edge(period: int, margin: float = 5.0) -> None:
    """Sleeps past the next epoch-aligned window boundary when fewer than `margin` s are left.

    A test that counts up to a limit and then reads the time to reset would otherwise
    fail when it runs in the last moments of a window (CI once ran one at 04:59:59.8).
    """
    left = period - time.time() % period
    if left < margin:
        await asyncio.sleep(left + 0.05)
