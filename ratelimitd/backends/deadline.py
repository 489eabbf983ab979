"""A timeout that does not blame Redis for the event loop's own stall.

When the event loop is blocked past a deadline (CPU starvation on a busy host, a long
garbage collection), the answer may well have arrived meanwhile and wait, unread, in the
socket. uvloop then runs the overdue timer before it reads the socket (libuv runs timers
before polling), and on asyncio's loop a timeout that cancels the waiting task
(`asyncio.timeout`) wins even when the answer is read in the same turn, since the task has
not resumed yet: the call fails although Redis answered in time. Measured with a 100 ms
timeout and the loop blocked 150 ms right after each write: 4 of 5 PINGs failed on uvloop, 3
of 5 on asyncio's loop (blocked 300 ms: 5 and 1).

So the work is failed by setting its future's exception, only if it has no answer by then,
and a `Deadline` that fires more than `LATE_S` after its time first gives the loop one more
turn (a 1 ms timer, due after the next poll for I/O).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

LATE_S = 0.010  # a timer this late means the loop was held up, not that the wait was long
GRACE_S = 0.001


class Deadline:
    """`expire(*args)` at loop time `when`, unless cancelled (like `loop.call_at`)."""

    __slots__ = ("_args", "_expire", "_graced", "_handle", "_loop", "_when")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        when: float,
        expire: Callable[..., object],
        *args: Any,
    ) -> None:
        self._loop = loop
        self._when = when
        self._expire = expire
        self._args = args
        self._graced = False
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        if not self._graced and self._loop.time() - self._when > LATE_S:
            self._graced = True
            self._handle = self._loop.call_later(GRACE_S, self._fire)
            return
        self._expire(*self._args)

    def cancel(self) -> None:
        self._handle.cancel()
