"""A TCP proxy that injects network faults between ratelimitd and Redis.

It runs an asyncio event loop in a background thread, so sync tests, async tests and child
processes (pointed at `proxy.url`) can all go through it. Its modes:

- `passthrough()`: forward both ways untouched (the initial mode);
- `latency(ms)`: deliver every chunk from upstream `ms` milliseconds late, in order, so each
  round trip takes `ms` longer (a slow link, not a slow server: throughput is not capped);
- `blackhole()`: accept connections and swallow every byte, both ways, answering nothing
  (a firewall that drops packets). A link that lost bytes is out of step with Redis, as a
  real TCP connection would be after its retransmissions gave up: `restore()` aborts it;
- `reset()`: abort every open connection with a TCP RST (`SO_LINGER 0`) and reset every new
  one as soon as it is accepted;
- `cut()`: close every open connection and stop listening, so new ones are refused
  (`restore()` listens again on the same port);
- `restore()`: back to `passthrough()`.

Counters: `live` (client connections open now), `peak` (most at once since the last
`reset_peak()`), `accepted` (ever), `dropped_bytes` (swallowed by the blackhole).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")
PASS, LATENCY, BLACKHOLE, RESET, CUT = "pass", "latency", "blackhole", "reset", "cut"
CHUNK = 64 * 1024


def _rst(writer: asyncio.StreamWriter) -> None:
    """Closes a connection with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side, the upstream side, and the pumps between."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dirty: bool = False  # lost bytes to the blackhole
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self, rst: bool = False) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                _rst(writer)
            else:
                writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class FaultProxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.mode = PASS
        self.delay_s = 0.0
        self.accepted = 0
        self.peak = 0
        self.dropped_bytes = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- the public side, called from any thread ------------------------------------------ #

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def live(self) -> int:
        return len(self._links)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def passthrough(self) -> None:
        self._call(self._set(PASS))

    restore = passthrough

    def latency(self, ms: float) -> None:
        self._call(self._set(LATENCY, ms / 1000))

    def blackhole(self) -> None:
        self._call(self._set(BLACKHOLE))

    def reset(self) -> None:
        self._call(self._set(RESET))

    def cut(self) -> None:
        self._call(self._set(CUT))

    def reset_peak(self) -> None:
        self._call(self._reset_peak())

    def wait_live_at_most(self, count: int, timeout: float = 5.0) -> int:
        """Waits until at most `count` connections are open; returns how many are."""
        deadline = time.monotonic() + timeout
        while self.live > count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.live

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FaultProxy {self.url} -> {self.upstream[0]}:{self.upstream[1]} {self.mode}>"

    # -- the loop's side ------------------------------------------------------------------- #

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _shutdown(self) -> None:
        await self._stop_listening()
        for link in list(self._links):
            self._forget(link, rst=True)
        # the links' tasks end on their own once their sockets are gone
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            _, pending = await asyncio.wait(others, timeout=2)
            for task in pending:
                task.cancel()

    async def _reset_peak(self) -> None:
        self.peak = len(self._links)

    async def _set(self, mode: str, delay_s: float = 0.0) -> None:
        previous, self.mode, self.delay_s = self.mode, mode, delay_s
        if mode == RESET:
            for link in list(self._links):
                self._forget(link, rst=True)
        elif mode == CUT:
            await self._stop_listening()
            for link in list(self._links):
                self._forget(link)
        elif mode in (PASS, LATENCY):
            for link in list(self._links):
                if link.dirty or link.upstream is None:  # out of step, or never connected
                    self._forget(link, rst=True)
            if previous == CUT or self._server is None:
                await self._listen()

    def _forget(self, link: _Link, rst: bool = False) -> None:
        link.close(rst)
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode in (RESET, CUT):
            _rst(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        self.peak = max(self.peak, len(self._links))
        try:
            if self.mode != BLACKHOLE:
                up_reader, link.upstream = await asyncio.open_connection(*self.upstream)
                link.tasks = [
                    asyncio.create_task(self._pump(reader, link.upstream, link, False)),
                    asyncio.create_task(self._pump(up_reader, writer, link, True)),
                ]
            else:
                link.tasks = [asyncio.create_task(self._swallow(reader, link))]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        except OSError:
            pass  # upstream refused: the client sees its connection closed
        finally:
            self._forget(link)

    async def _swallow(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """A connection accepted in blackhole mode: nothing goes anywhere, ever."""
        while data := await reader.read(CHUNK):
            self.dropped_bytes += len(data)
            link.dirty = True

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        delayed: bool,
    ) -> None:
        """Copies one direction, honouring the mode for every chunk. Ends the link at EOF."""
        delivery: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver(delivery, writer))
        try:
            while data := await reader.read(CHUNK):
                if self.mode == BLACKHOLE:
                    self.dropped_bytes += len(data)
                    link.dirty = True
                    continue
                delay = self.delay_s if delayed and self.mode == LATENCY else 0.0
                delivery.put_nowait((time.monotonic() + delay, data))
            await delivery.join()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            self._forget(link)

    async def _deliver(
        self, delivery: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await delivery.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                pass
            finally:
                delivery.task_done()
