"""Shares round trips between concurrent callers.

One batch is out at a time while round trips are quick: work submitted meanwhile waits and
leaves together, as one batch, as soon as it comes back. When a batch has been out for
`stall_s` (the store is slow, or a large batch takes its time), the next one leaves without
waiting for it, up to `max_in_flight` at once, so a slow round trip never holds the calls
behind it past their timeout; pipelining them costs more round trips only while it lasts.

Under load, a batch also waits `delay_s` (1 ms for Redis, `RATELIMITD_REDIS_BATCH_DELAY_US`)
for company before it leaves: each round trip costs a write, an event-loop wake-up and a read,
system calls that cost far more here than the commands themselves, so fewer, fuller batches
cost less CPU per decision. Measured with h2load at 16 and 64 streams on 2 shared cores:
without the delay 0.85 round trips per decision and 50 % more CPU per call; 0.5 ms gave 0.18
and 0.84x the calls/s of an empty gRPC server, 1 to 1.2 ms about 0.09 and 0.84-0.93x, 1.5
to 2 ms lost again at 16 streams, where added latency caps a closed loop. The delay applies
only under load: while a batch is out, or after a batch that had company. Calls one at a time
(a lone caller, low concurrency) leave at the next event-loop step and pay nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        send: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        max_in_flight: int = 16,
        max_batch: int = 1024,
        delay_s: float = 0.001,
        stall_s: float = 0.002,
    ) -> None:
        self._send = send
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._waiting_out_stall = False  # the flush above waits for the batch out to stall
        self.delay_s = delay_s
        self.stall_s = stall_s
        self._last_batch_size = 0
        self._last_sent = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, item: Item) -> asyncio.Future[Result]:
        loop = self._loop
        if loop is None:  # looked up once: on Python 3.11 each lookup costs a getpid()
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flush_handle is not None or len(self._tasks) >= self.max_in_flight:
            return
        if self._tasks:
            stalled_in = self._last_sent + self.stall_s - loop.time()
            self._waiting_out_stall = stalled_in > self.delay_s
            self._flush_handle = loop.call_later(max(stalled_in, self.delay_s), self._flush)
        elif self.delay_s and self._last_batch_size > 1:
            self._flush_handle = loop.call_later(self.delay_s, self._flush)
        else:
            self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._waiting_out_stall = False
        loop = self._loop
        assert loop is not None
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        batch = [(item, future) for item, future in batch if not future.done()]
        self._last_batch_size = len(batch)
        if batch:
            self._last_sent = loop.time()
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        if self._pending:
            self._schedule(loop)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._waiting_out_stall and self._flush_handle is not None:
            self._flush_handle.cancel()  # what waited for this batch may go now
            self._flush_handle = None
            self._waiting_out_stall = False
        if self._pending:
            assert self._loop is not None
            self._schedule(self._loop)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
