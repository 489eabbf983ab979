"""The HTTP/2 core (core.py) on an asyncio transport, with gRPC calls (calls.py) on top.

`Connection` is the asyncio `Protocol` of one client connection. It feeds the bytes it reads
to its `ServerCore` and writes what the core has to send, once per event-loop turn, in one
`write`; it runs the core's timeouts once a second, reads no more from a client that does
not read its answers, lets other connections go first when a read holds more frames than
`frames_per_read`, and closes the socket the way a GOAWAY needs (our side first, input
drained for a moment). It is also the core's `Events`: what the core tells of requests goes
to the call layer (`CallLayer`, calls.py), which answers through `answer`, `send_message`,
`finish` and `refuse` here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from ratelimitd.transport.h2.core import ServerCore
from ratelimitd.transport.h2.headers import (
    GRPC_DEADLINE_EXCEEDED,
    GRPC_RESOURCE_EXHAUSTED,
    Headers,
    RequestHead,
    trailers_only,
)
from ratelimitd.transport.h2.limits import DEFAULT_LIMITS, Limits
from ratelimitd.transport.h2.stream import Stream

TICK_S = 1.0  # how often a connection checks its timeouts
LINGER_S = 1.0  # after a GOAWAY for an error: how long input is read (and dropped)


class CallStream(Stream):
    """A stream with what its gRPC call needs on the event loop."""

    __slots__ = ("messages", "task", "waiting")

    def __init__(
        self, stream_id: int, head: RequestHead, window: int, content_length: int | None
    ) -> None:
        super().__init__(stream_id, head, window, content_length)
        self.task: asyncio.Task[None] | None = None
        self.messages: asyncio.Queue[bytes | None] | None = None  # streaming requests only
        self.waiting: asyncio.Event | None = None  # a writer waiting for the backlog to go


class CallLayer(Protocol):
    """What the connection asks of the gRPC layer (calls.Calls)."""

    max_message: int

    def parse_head(self, headers: Headers) -> RequestHead: ...

    def start(self, connection: Connection, stream: CallStream, body: bytes | None) -> None: ...

    def feed(self, connection: Connection, stream: CallStream) -> None: ...

    def too_large(self, connection: Connection, stream: CallStream) -> None: ...


class Connection(asyncio.Protocol):
    def __init__(
        self,
        calls: CallLayer,
        on_close: Callable[[Connection], None],
        limits: Limits = DEFAULT_LIMITS,
        refuse: bool = False,
    ) -> None:
        self.calls = calls
        self.limits = limits
        core: ServerCore[CallStream] = ServerCore(self, calls.max_message + 5, limits)
        self.core = core
        self.streams = core.streams
        self.answer = core.answer  # a unary call's response: headers, message, trailers
        self.send_message = core.send_message
        self.finish = core.finish
        self.refuse = core.refuse
        self.consumed = core.consumed  # request bytes taken by a call: credit for more
        self._on_close = on_close
        self._refuse = refuse  # over the connection limit: GOAWAY at once
        self.transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._paused_for_writing = False
        self._paused_for_work = False
        self._timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()  # kept: each asking costs a getpid system call
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def draining(self) -> bool:
        return self.core.draining

    # -- the transport's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # as grpc names peers
            host, port = peer[0], peer[1]
            self.core.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        else:
            self.core.peer = str(peer)
        self.core.start(refuse=self._refuse)
        if not self.core.failed:
            self._timer = self.loop.call_later(TICK_S, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.connection_lost()
        self.idle.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self._on_close(self)

    def data_received(self, data: bytes) -> None:
        more = self.core.receive(data)
        if more or self._paused_for_work:
            self._follow_work(more)

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests meanwhile (what
        is written is bounded by flow control only for DATA, not for headers)."""
        self._paused_for_writing = True
        self._follow_pauses()

    def resume_writing(self) -> None:
        self._paused_for_writing = False
        self._follow_pauses()

    def _follow_work(self, more: bool) -> None:
        """More frames than one turn's share were read: the others go first."""
        if more != self._paused_for_work:
            self._paused_for_work = more
            self._follow_pauses()
        if more:
            self.loop.call_soon(self._resume_work)

    def _resume_work(self) -> None:
        if self.transport is not None:
            self._follow_work(self.core.resume())

    def _follow_pauses(self) -> None:
        if self.transport is None or self.transport.is_closing() or self.core.failed:
            return
        if self._paused_for_writing or self._paused_for_work:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _tick(self) -> None:
        self._timer = None
        if self.transport is None or self.core.failed:
            return
        self.core.tick(time.monotonic())
        if not self.core.failed:
            self._timer = self.loop.call_later(TICK_S, self._tick)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def drain(self, reason: str = "server shutting down") -> None:
        """GOAWAY: calls already started finish, new ones are refused; closes when idle."""
        self.core.drain(reason)

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def _linger_and_close(self) -> None:
        """The socket closes once the GOAWAY has gone: our side is shut at once (FIN after
        the GOAWAY) while input is read and dropped for a moment. Closing with unread input
        would send a TCP reset, which can destroy the GOAWAY before it is read."""
        self._flush()
        transport = self.transport
        if transport is None:
            return
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)

    # -- what the core tells (core.Events) ------------------------------------------------

    new_stream = CallStream  # (the class itself: one call less on every request)

    def parse_head(self, headers: Headers) -> RequestHead:
        return self.calls.parse_head(headers)

    def output_ready(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def streaming_request_opened(self, stream: CallStream) -> None:
        stream.messages = asyncio.Queue()
        self.calls.start(self, stream, None)

    def request_data(self, stream: CallStream) -> None:
        self.calls.feed(self, stream)

    def request_ended(self, stream: CallStream, body: bytes | None) -> None:
        if body is not None:
            self.calls.start(self, stream, body)
        elif stream.messages is not None:
            stream.messages.put_nowait(None)

    def request_too_large(self, stream: CallStream) -> None:
        self.calls.too_large(self, stream)

    def request_timed_out(self, stream: CallStream) -> None:
        seconds = self.limits.request_body_timeout_s
        message = f"the request did not end within {seconds:g} s"
        self.core.refuse(stream, trailers_only(GRPC_DEADLINE_EXCEEDED, message))

    def stream_cancelled(self, stream: CallStream) -> None:
        self.cancel(stream)

    def stream_writable(self, stream: CallStream) -> None:
        if stream.waiting is not None:
            stream.waiting.set()

    def stream_closed(self, stream: CallStream) -> None:
        stream.messages = None  # what its call has not taken is dropped with it
        if stream.waiting is not None:
            stream.waiting.set()

    def streams_changed(self, busy: bool) -> None:
        if busy:
            self.idle.clear()
        else:
            self.idle.set()

    def close_requested(self, after_error: bool) -> None:
        if after_error:
            self._linger_and_close()
        elif self.transport is not None:
            self.loop.call_soon(self.close)

    def header_list_refusal(self, message: str) -> bytes:
        return trailers_only(GRPC_RESOURCE_EXHAUSTED, message)

    # -- what the call layer does (answer, send_message, finish, refuse and consumed are
    # the core's own, bound in __init__: one call less on every answer) -------------------

    async def writable(self, stream: CallStream) -> None:
        """Waits until the stream's backlog has gone out (a streaming writer's back-pressure)."""
        while not self.core.writable(stream):
            if stream.waiting is None:
                stream.waiting = asyncio.Event()
            stream.waiting.clear()
            await stream.waiting.wait()

    @staticmethod
    def cancel(stream: CallStream) -> None:
        """Cancels the stream's call and lets go of its task at once: a cancelled task's
        exception, traceback and frames refer to the stream, and the stream to the task
        would make a cycle that only a full garbage collection frees."""
        task, stream.task = stream.task, None
        if task is not None:
            task.cancel()
