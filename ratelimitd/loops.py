"""Which asyncio event loop `serve` runs on (`RATELIMITD_EVENT_LOOP`).

uvloop (libuv, in C) runs the loop's own work — polling, callbacks, socket reads and writes —
without Python. Both gRPC servers and the Redis connection read and write on it, so the
loop's cost is a fair share of a decision: on grpc.aio (which also wakes the loop several
times per call from its poller thread) the service spent about a tenth less CPU per call
with uvloop (bench/README.md). "auto" takes uvloop when it is installed (it is a dependency
on Linux and macOS) and asyncio's own loop otherwise.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

from ratelimitd.errors import ConfigError

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def unknown_loop(choice: str) -> str | None:
    """The error for a `choice` not in EVENT_LOOPS, or None."""
    if choice in EVENT_LOOPS:
        return None
    return f"RATELIMITD_EVENT_LOOP: expected one of {', '.join(EVENT_LOOPS)}, got '{choice}'"


def loop_factory(choice: str) -> LoopFactory:
    """The factory for `choice`, one of EVENT_LOOPS."""
    problem = unknown_loop(choice)
    if problem:
        raise ConfigError([problem])
    if choice == "asyncio" or (choice == "auto" and not uvloop_available()):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            ["RATELIMITD_EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop)"]
        ) from None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The name of `loop`'s kind (uvloop or asyncio), for the startup log."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
