"""Shares round trips between concurrent callers.

One batch is out at a time while round trips are quick: work submitted meanwhile waits and
leaves together, as one batch, as soon as it comes back. When a batch has been out for
`stall_s` (the store is slow, or a large batch takes its time), the next one leaves without
waiting for it, up to `max_in_flight` at once, so a slow round trip never holds the calls
behind it past their timeout; pipelining them costs more round trips only while it lasts.

Under load, a batch also waits `delay_s` (0.5 ms for Redis, `RATELIMITD_REDIS_BATCH_DELAY_US`)
for company before it leaves: each round trip costs a write, an event-loop wake-up and a read,
system calls that cost far more here than the commands themselves, so fewer, fuller batches
cost less CPU per decision. How long pays depends on what else a call costs. On grpc.aio
(150-200 µs of Python per call) 1.5 ms was best (a 2 ms timer on uvloop, whose timers count
whole milliseconds). With ratelimitd's own HTTP/2 server (about 25 µs per call) the wait
itself showed: at half of the peak rate (64 streams, paced, three descriptors) 1.5 ms gave a
p50 of 3.8-4.2 ms and a p99 of 6.7-7.4 ms, 0.5 ms (a 1 ms timer on uvloop) 1.1-1.3 ms and
3.2-4.0 ms, no delay 1.5-1.6 ms and 4.3-4.6 ms, with the same peak calls/s within noise and
0.012-0.055 round trips per decision at 64 streams (bench/README.md, step 12). The delay applies
only under load: while a batch is out, or after a batch that had company. Calls one at a time
(a lone caller, low concurrency) leave at the next event-loop step and pay nothing. And a
batch waiting for company leaves as soon as it holds as many as the largest of the last 8
batches: four callers in a closed loop otherwise waited out the whole delay every round,
with no one else to come (4 streams: 1,530 calls/s against the empty server's 5,840).

With `timeout_s`, work not answered that long after it was submitted fails with
`BatchTimeout`, whether it waits to leave or is out: one timer per batch (due when its oldest
item's time is up) and one for the queue, rather than one per item, which cost a timer
handle, a heap push and a cancellation on every call (about a sixth of a decision's Python).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ratelimitd.backends.deadline import Deadline

Item = TypeVar("Item")
Result = TypeVar("Result")


RECENT_BATCHES = 8


class BatchTimeout(TimeoutError):
    """Work that got no answer within the batcher's `timeout_s`."""


_Entry = tuple[Item, "asyncio.Future[Result]", float]  # item, its future, its deadline


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        send: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        max_in_flight: int = 16,
        max_batch: int = 1024,
        delay_s: float = 0.0005,
        stall_s: float = 0.002,
        timeout_s: float | None = None,
    ) -> None:
        self._send = send
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._pending: list[_Entry[Item, Result]] = []
        self._queue_timer: Deadline | None = None  # the oldest waiting item's time
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._waiting_out_stall = False  # the flush above waits for the batch out to stall
        self.delay_s = delay_s
        self.stall_s = stall_s
        self._last_sent = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        # the largest of the last batches: a batch waiting out `delay_s` for company leaves
        # as soon as it has that much, without waiting out the rest of the delay
        self._recent_sizes: deque[int] = deque([0], maxlen=RECENT_BATCHES)  # last one last
        self._company = 0
        self._gathering = False  # the flush handle waits for company, nothing else

    def submit(self, item: Item) -> asyncio.Future[Result]:
        loop = self._loop
        if loop is None:  # looked up once: on Python 3.11 each lookup costs a getpid()
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        deadline = loop.time() + self.timeout_s if self.timeout_s is not None else math.inf
        self._pending.append((item, future, deadline))
        if self._gathering and len(self._pending) >= self._company:
            assert self._flush_handle is not None
            self._flush_handle.cancel()
            self._flush_handle = None
            self._gathering = False
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flush_handle is not None:
            return
        if len(self._tasks) >= self.max_in_flight:  # full: wait for a batch to come back
            if self._queue_timer is None and self._pending[0][2] < math.inf:
                self._queue_timer = Deadline(loop, self._pending[0][2], self._expire_waiting)
            return
        if self._tasks:
            stalled_in = self._last_sent + self.stall_s - loop.time()
            self._waiting_out_stall = stalled_in > self.delay_s
            self._flush_handle = loop.call_later(max(stalled_in, self.delay_s), self._flush)
        elif self.delay_s and self._recent_sizes[-1] > 1 and len(self._pending) < self._company:
            self._gathering = True
            self._flush_handle = loop.call_later(self.delay_s, self._flush)
        else:
            self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._waiting_out_stall = False
        self._gathering = False
        loop = self._loop
        assert loop is not None
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        batch = [entry for entry in batch if not entry[1].done()]
        self._recent_sizes.append(len(batch))
        self._company = max(self._recent_sizes)
        if batch:
            self._last_sent = loop.time()
            timer = None
            if batch[0][2] < math.inf:  # the oldest first: its deadline is the batch's
                timer = Deadline(loop, batch[0][2], _expire, batch, self.timeout_s)
            self._tasks.add(loop.create_task(self._run(batch, timer)))
        if self._pending:
            self._schedule(loop)

    def _expire_waiting(self) -> None:
        """Fails the work whose time ran out while every batch slot was taken."""
        self._queue_timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        expired = 0
        for _, future, deadline in self._pending:
            if deadline > now:
                break
            expired += 1
            _fail(future, self.timeout_s)
        del self._pending[:expired]
        if self._pending:
            self._schedule(loop)

    def _finished(self) -> None:
        """A batch is back: what waited for it may go."""
        if self._waiting_out_stall and self._flush_handle is not None:
            self._flush_handle.cancel()  # what waited for this batch may go now
            self._flush_handle = None
            self._waiting_out_stall = False
        if self._pending:
            assert self._loop is not None
            self._schedule(self._loop)

    async def _run(self, batch: list[_Entry[Item, Result]], timer: Deadline | None) -> None:
        # The batch counts as out until its results are handed over, and no longer: its
        # callers, woken by them, may submit again at once, and must find it back (a done
        # callback on the task would run only after them, and they would wait out a delay
        # meant for a batch still out).
        try:
            results = await self._send([item for item, _, _ in batch])
        except Exception as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            if timer is not None:
                timer.cancel()
            task = asyncio.current_task()
            assert task is not None
            self._tasks.discard(task)
            self._finished()

    async def close(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None


def _expire(batch: list[_Entry[Item, Result]], timeout_s: float | None) -> None:
    for _, future, _ in batch:
        _fail(future, timeout_s)


def _fail(future: asyncio.Future[Result], timeout_s: float | None) -> None:
    if not future.done():
        future.set_exception(BatchTimeout(f"no answer within {(timeout_s or 0) * 1000:.0f} ms"))
