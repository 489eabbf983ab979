"""Shares round trips between concurrent callers.

At most `max_in_flight` batches are out at once. Work submitted while they are all busy waits
and leaves together, as one batch, as soon as one comes back. Under load, a batch also waits
`delay_s` (default 0.5 ms) for company before it leaves: each round trip costs the event loop
a wake-up, a write and a read whatever its size, so fewer, fuller batches cost less CPU per
decision (measured here: 0.7 round trips per decision and about 500 µs of CPU per call
without the delay, 0.1 and 350 µs with 1 ms). The delay applies only under load: while a
batch is out, or after a batch that had company. Calls one at a time (a lone caller, low
concurrency) leave at the next event-loop step and pay nothing, since the event loop's timers
are no finer than a millisecond.
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
        delay_s: float = 0.0005,
    ) -> None:
        self._send = send
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self.delay_s = delay_s
        self._last_batch_size = 0
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
        if not self._flush_scheduled and len(self._tasks) < self.max_in_flight:
            self._flush_scheduled = True
            if self.delay_s and (self._tasks or self._last_batch_size > 1):
                loop.call_later(self.delay_s, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        loop = self._loop
        assert loop is not None
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        batch = [(item, future) for item, future in batch if not future.done()]
        self._last_batch_size = len(batch)
        if batch:
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        if self._pending:
            self._schedule(loop)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
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
