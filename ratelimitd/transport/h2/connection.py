"""One HTTP/2 connection carrying gRPC calls: frames in, calls started, answers out.

Server side of RFC 9113 for what gRPC clients send: no server push, no priorities (PRIORITY
frames and fields are checked and otherwise ignored), one header block per request plus
optional trailers. Flow control is kept both ways. Answers written during one turn of the
event loop leave in one `write`, which is how a batch of decisions answered together costs
one system call instead of one per call.

Every limit on what one client may hold or cost is in `limits.py`. Request bytes count
against the connection's window until they are handed to a call (or dropped): credit goes
back as they are consumed, so a connection holds at most `Limits.connection_buffer` of them.
A stream the client got wrong is reset on its own (a stream error); only what breaks the
connection's shared state (HPACK, framing, flow control) or floods it ends the connection,
with a GOAWAY that is delivered before the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import hpack

from ratelimitd.transport.h2 import frames as f
from ratelimitd.transport.h2.headers import (
    GRPC_DEADLINE_EXCEEDED,
    GRPC_RESOURCE_EXHAUSTED,
    RESPONSE_HEADERS,
    TRAILERS_OK,
    Malformed,
    RequestHeaders,
    TooLarge,
    trailers_only,
)
from ratelimitd.transport.h2.limits import DEFAULT_LIMITS, ERRORS, Limits, TokenBucket, count

if TYPE_CHECKING:
    from ratelimitd.transport.h2.calls import Calls, RequestHead

STREAM_WINDOW = 1 << 20  # what each stream may send before we refill (a refill at half)
CLOSED_MEMORY = 1024  # closed streams remembered, to tell late frames from wrong ones
TICK_S = 1.0  # how often a connection checks its timeouts
LINGER_S = 1.0  # after a GOAWAY for an error: how long input is read (and dropped)
HARD_HEADER_LIST_FACTOR = 4  # decoding stops (a connection error) at 4 x max_header_list

_OK_TRAILERS_FLAGS = f.END_HEADERS | f.END_STREAM


class Stream:
    """One call's state on its connection."""

    __slots__ = (
        "backlog",
        "body",
        "content_length",
        "ended",
        "head",
        "headers_sent",
        "held",
        "id",
        "messages",
        "opened",
        "received",
        "refused",
        "reset_sent",
        "task",
        "trailers",
        "unacknowledged",
        "window",
        "writable",
    )

    def __init__(
        self, stream_id: int, head: RequestHead, window: int, content_length: int | None
    ) -> None:
        self.id = stream_id
        self.head = head
        self.content_length = content_length
        self.received = 0  # body bytes, padding aside (to compare with content-length)
        self.held = 0  # request bytes kept (in `body` or `messages`), not yet consumed
        self.opened = time.monotonic()
        self.reset_sent = False
        self.body = bytearray()
        self.unacknowledged = 0  # body bytes not yet given back with a WINDOW_UPDATE
        self.ended = False  # the client sent END_STREAM
        self.refused = False  # answered early (too large, bad message): later data is dropped
        self.window = window  # what we may still send on it
        self.headers_sent = False
        self.backlog = bytearray()  # DATA waiting for window
        self.trailers: bytes | None = None  # to go out once the backlog has
        self.task: asyncio.Task[None] | None = None
        self.messages: asyncio.Queue[bytes | None] | None = None  # streaming requests only
        self.writable: asyncio.Event | None = None  # set when the backlog has gone out


class Connection(asyncio.Protocol):
    def __init__(
        self,
        calls: Calls,
        on_close: Callable[[Connection], None],
        limits: Limits = DEFAULT_LIMITS,
        refuse: bool = False,
    ) -> None:
        self.calls = calls
        self.limits = limits
        self._on_close = on_close
        self._refuse = refuse  # over the connection limit: GOAWAY at once
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.draining = False  # GOAWAY sent: no new streams
        self.failed = False  # GOAWAY for an error sent: input is dropped until the close
        self._buffer = b""
        self._preface_seen = False
        self._settings_seen = False
        self._headers = RequestHeaders(
            calls.parse_head,
            limits.max_header_list,
            limits.max_header_list * HARD_HEADER_LIST_FACTOR,
            limits.remembered_blocks,
            limits.remembered_block_size,
        )
        # stream, flags, block so far, CONTINUATION frames so far, depends on itself
        self._continuing: tuple[int, int, bytearray, int, bool] | None = None
        self._closed: dict[int, bool] = {}  # recently closed stream -> the client had ended it
        self._forgotten = 0  # closed streams up to this id may have been forgotten
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._receive_window = f.DEFAULT_WINDOW
        self._credit = 0  # consumed request bytes not yet given back to the connection window
        self._blocked: set[Stream] = set()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._paused_for_writing = False
        self._paused_for_work = False
        self._resets = TokenBucket(limits.resets_per_s, limits.resets_burst)
        self._empty_frames = TokenBucket(limits.empty_frames_per_s, limits.empty_frames_burst)
        self._pings = TokenBucket(limits.pings_per_s, limits.pings_burst)
        self._settings = TokenBucket(limits.settings_per_s, limits.settings_burst)
        self._made = self._idle_since = time.monotonic()
        self._partial_since: float | None = None  # since when a frame is incomplete
        self._timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()  # kept: each asking costs a getpid system call
        self.idle = asyncio.Event()
        self.idle.set()

    # -- the transport's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # as grpc names peers
            host, port = peer[0], peer[1]
            self.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        else:
            self.peer = str(peer)
        self._write(
            f.settings(
                {
                    f.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                    f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    f.MAX_HEADER_LIST_SIZE: self.limits.max_header_list,
                    f.ENABLE_PUSH: 0,
                }
            )
        )
        if self._refuse:
            count("connections")
            self._goaway_and_close(f.ENHANCE_YOUR_CALM, "too many connections")
            return
        if self.limits.connection_buffer > f.DEFAULT_WINDOW:  # (it cannot start smaller)
            self._write(f.window_update(0, self.limits.connection_buffer - f.DEFAULT_WINDOW))
            self._receive_window = self.limits.connection_buffer
        self._timer = self.loop.call_later(TICK_S, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in list(self.streams.values()):
            self.cancel(stream)
        self.streams.clear()
        self._blocked.clear()
        self.idle.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self._on_close(self)

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests meanwhile (what
        is written is bounded by flow control only for DATA, not for headers)."""
        self._paused_for_writing = True
        self._follow_pauses()

    def resume_writing(self) -> None:
        self._paused_for_writing = False
        self._follow_pauses()

    def _follow_pauses(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._paused_for_writing or self._paused_for_work:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return  # read and dropped until the close, so that the GOAWAY is not lost
        self._process(self._buffer + data if self._buffer else data)

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    def _process(self, buffer: bytes) -> None:
        try:
            position, more = self._read_frames(buffer)
        except f.H2Error as exc:
            self._fail(exc.code, str(exc))
            return
        except hpack.OversizedHeaderListError as exc:
            count("header_list")
            self._fail(f.ENHANCE_YOUR_CALM, f"a header list far over the limit: {exc}")
            return
        except hpack.HPACKError as exc:
            self._fail(f.COMPRESSION_ERROR, f"bad header block: {exc}")
            return
        self._buffer = buffer[position:]
        if not (self._buffer or self._continuing):
            self._partial_since = None
        elif self._partial_since is None:  # slowloris: a frame begun, to be finished in time
            self._partial_since = time.monotonic()
        if more != self._paused_for_work:
            self._paused_for_work = more
            self._follow_pauses()
        if more:  # this connection has had its share of this turn: the others go first
            self.loop.call_soon(self._resume_work)

    def _resume_work(self) -> None:
        if self.transport is not None and not self.failed:
            self._process(self._buffer)

    def _read_frames(self, buffer: bytes) -> tuple[int, bool]:
        """Reads at most `frames_per_read` frames: where it stopped, and whether complete
        frames are left."""
        position = 0
        if not self._preface_seen:
            if len(buffer) < len(f.PREFACE):
                if not f.PREFACE.startswith(buffer):
                    raise f.H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0, False
            if not buffer.startswith(f.PREFACE):
                raise f.H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            position = len(f.PREFACE)
            self._preface_seen = True
        budget = self.limits.frames_per_read
        next_frame = f.next_frame
        while (found := next_frame(buffer, position)) is not None:
            if not budget:
                return position, True
            budget -= 1
            kind, flags, stream_id, start, position = found
            payload = buffer[start:position]
            if self._continuing is not None and kind != f.CONTINUATION:
                raise f.H2Error(f.PROTOCOL_ERROR, "a header block was interrupted")
            if kind == f.DATA:
                self._on_data(stream_id, flags, payload)
            elif kind == f.HEADERS:
                self._on_headers(stream_id, flags, payload)
            elif not self._settings_seen and kind != f.SETTINGS:
                raise f.H2Error(f.PROTOCOL_ERROR, "the first frame was not SETTINGS")
            elif kind == f.CONTINUATION:
                self._on_continuation(stream_id, flags, payload)
            elif kind == f.WINDOW_UPDATE:
                self._on_window_update(stream_id, payload)
            elif kind == f.SETTINGS:
                self._on_settings(stream_id, flags, payload)
            elif kind == f.PING:
                self._on_ping(stream_id, flags, payload)
            elif kind == f.RST_STREAM:
                self._on_rst_stream(stream_id, payload)
            elif kind == f.GOAWAY:
                if stream_id:
                    raise f.H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
            elif kind == f.PRIORITY:
                self._on_priority(stream_id, payload)
            elif kind == f.PUSH_PROMISE:
                raise f.H2Error(f.PROTOCOL_ERROR, "a client cannot push")
            # unknown frame types are ignored (RFC 9113 §4.1)
        return position, False

    # -- frames in ------------------------------------------------------------------------

    def _calm(self, limit: str, reason: str) -> f.H2Error:
        """A flood: the connection ends with ENHANCE_YOUR_CALM."""
        count(limit)
        return f.H2Error(f.ENHANCE_YOUR_CALM, reason)

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if not self._settings_seen:
            raise f.H2Error(f.PROTOCOL_ERROR, "the first frame was not SETTINGS")
        block = f.unpad(flags, payload)
        self_dependent = False
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS too short for its priority")
            self_dependent = int.from_bytes(block[:4], "big") & 0x7FFFFFFF == stream_id
            block = block[5:]
        if flags & f.END_HEADERS:
            self._on_header_block(stream_id, flags, block, self_dependent)
        else:
            if not block and not self._empty_frames.take():
                raise self._calm("empty_frames", "too many empty frames")
            self._continuing = (stream_id, flags, bytearray(block), 0, self_dependent)

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, block, continuations, self_dependent = self._continuing
        block += payload
        continuations += 1
        if len(block) > self.limits.max_header_block:
            raise self._calm("header_block", f"a header block over {len(block) - 1} bytes")
        if continuations > self.limits.max_continuations:
            raise self._calm("continuations", f"over {continuations - 1} CONTINUATION frames")
        if not payload and not flags & f.END_HEADERS and not self._empty_frames.take():
            raise self._calm("empty_frames", "too many empty frames")
        if flags & f.END_HEADERS:
            self._continuing = None
            self._on_header_block(stream_id, first_flags, bytes(block), self_dependent)
        else:
            self._continuing = (stream_id, first_flags, block, continuations, self_dependent)

    def _on_header_block(
        self, stream_id: int, flags: int, block: bytes, self_dependent: bool = False
    ) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._on_trailers(stream, flags, block)
        elif not stream_id & 1:
            raise f.H2Error(f.PROTOCOL_ERROR, f"a client stream with even id {stream_id}")
        elif stream_id <= self.last_stream_id:
            self._on_headers_of_closed(stream_id, block)
        else:
            self._open(stream_id, flags, block, self_dependent)

    def _open(self, stream_id: int, flags: int, block: bytes, self_dependent: bool) -> None:
        ended = bool(flags & f.END_STREAM)
        read: tuple[RequestHead, int | None] | Malformed | TooLarge
        try:
            read = self._headers.read(block)  # always: HPACK stays in step
        except (Malformed, TooLarge) as exc:
            read = exc
        self.last_stream_id = stream_id  # a bad HPACK block (raised above) opens nothing
        if isinstance(read, Malformed):
            self._refuse_stream(stream_id, f.PROTOCOL_ERROR)
            return
        if isinstance(read, TooLarge):
            count("header_list")
            self._answer_at_once(
                stream_id, trailers_only(GRPC_RESOURCE_EXHAUSTED, str(read)), ended
            )
            return
        head, content_length = read
        if self_dependent:
            self._refuse_stream(stream_id, f.PROTOCOL_ERROR)
            return
        if self.draining or len(self.streams) >= self.limits.max_concurrent_streams:
            if not self._resets.take():
                raise self._calm("resets", "too many streams refused")
            self._refuse_stream(stream_id, f.REFUSED_STREAM)
            return
        stream = Stream(stream_id, head, self._peer_initial_window, content_length)
        stream.ended = ended  # so that a refusal needs no RST_STREAM
        self.streams[stream_id] = stream
        self.idle.clear()
        if head.refusal is not None:
            self.refuse(stream, head.refusal)
        elif head.handler is not None and head.handler.request_streaming:
            stream.messages = asyncio.Queue()
            self.calls.start(self, stream, None)
        if ended:
            self._end_of_request(stream)

    def _on_trailers(self, stream: Stream, flags: int, block: bytes) -> None:
        try:
            self._headers.read_trailers(block)
        except Malformed:
            self._reset(stream, f.PROTOCOL_ERROR)
            return
        if stream.ended:  # half-closed (remote): nothing more may come
            self._reset(stream, f.STREAM_CLOSED)
        elif not flags & f.END_STREAM:
            self._reset(stream, f.PROTOCOL_ERROR)  # a second block that does not end it
        else:
            self._end_of_request(stream)

    def _on_headers_of_closed(self, stream_id: int, block: bytes) -> None:
        """HEADERS on a stream at or below the last one opened: trailers still in flight on a
        stream we answered early are fine; anything else breaks the rules."""
        with contextlib.suppress(Malformed):  # decoded all the same: HPACK stays in step
            self._headers.read_trailers(block)
        client_ended = self._closed.get(stream_id)
        if client_ended:
            raise f.H2Error(f.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        if client_ended is None and stream_id > self._forgotten:
            raise f.H2Error(f.PROTOCOL_ERROR, f"stream {stream_id} below {self.last_stream_id}")

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        self._receive_window -= len(payload)
        if self._receive_window < 0:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "the client sent past the connection window")
        stream = self.streams.get(stream_id)
        if stream is None:
            self._give_credit(len(payload))
            self._on_data_of_closed(stream_id)
            return
        if stream.ended:
            self._give_credit(len(payload))
            self._reset(stream, f.STREAM_CLOSED)
            return
        if not payload and not flags & f.END_STREAM and not self._empty_frames.take():
            raise self._calm("empty_frames", "too many empty frames")
        data = f.unpad(flags, payload)
        self._give_credit(len(payload) - len(data))
        stream.received += len(data)
        if stream.content_length is not None and stream.received > stream.content_length:
            self._give_credit(len(data))
            self._reset(stream, f.PROTOCOL_ERROR)
            return
        self._keep(stream, data)
        if flags & f.END_STREAM:
            if stream.content_length not in (None, stream.received):
                self._reset(stream, f.PROTOCOL_ERROR)
                return
            self._end_of_request(stream)
        else:
            stream.unacknowledged += len(payload)
            if stream.unacknowledged >= STREAM_WINDOW // 2:
                self._write(f.window_update(stream_id, stream.unacknowledged))
                stream.unacknowledged = 0

    def _on_data_of_closed(self, stream_id: int) -> None:
        if stream_id > self.last_stream_id or not stream_id & 1:
            raise f.H2Error(f.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        if self._closed.get(stream_id):
            raise f.H2Error(f.STREAM_CLOSED, f"DATA on closed stream {stream_id}")
        # else: on a stream we answered or reset early; it was on its way

    def _keep(self, stream: Stream, data: bytes) -> None:
        """Holds a request's bytes until its call takes them (or drops them)."""
        if stream.refused:
            self._give_credit(len(data))
        elif len(stream.body) + len(data) > self.calls.max_message + 5:
            self._give_credit(len(data))
            self.calls.too_large(self, stream)
        else:
            stream.body += data
            stream.held += len(data)
            if stream.messages is not None:
                self.calls.feed(self, stream)

    def consumed(self, stream: Stream, size: int) -> None:
        """`size` bytes of the stream's request were taken by its call: credit for more."""
        size = min(size, stream.held)
        stream.held -= size
        self._give_credit(size)

    def _give_credit(self, size: int) -> None:
        """Gives consumed bytes back to the connection window, a quarter of it at a time."""
        self._credit += size
        if self._credit >= self.limits.connection_buffer // 16:
            self._write(f.window_update(0, self._credit))
            self._receive_window += self._credit
            self._credit = 0

    def _end_of_request(self, stream: Stream) -> None:
        stream.ended = True
        if stream.refused:
            return
        if stream.messages is not None:
            stream.messages.put_nowait(None)
        else:
            body = bytes(stream.body)
            stream.body = bytearray()
            self.consumed(stream, len(body))
            self.calls.start(self, stream, body)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if not stream_id or len(payload) != 4:
            raise f.H2Error(f.PROTOCOL_ERROR, "a malformed RST_STREAM")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id or not stream_id & 1:
                raise f.H2Error(f.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        if not self._resets.take():
            raise self._calm("resets", "too many streams reset")
        stream.ended = True  # nothing more may come on it
        self.cancel(stream)
        self._close(stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise f.H2Error(f.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise f.H2Error(f.FLOW_CONTROL_ERROR, "the connection window overflowed")
            for blocked in list(self._blocked):
                self._pump(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise f.H2Error(f.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if not increment:
            self._reset(stream, f.PROTOCOL_ERROR)
            return
        stream.window += increment
        if stream.window > f.MAX_WINDOW:
            self._reset(stream, f.FLOW_CONTROL_ERROR)
        elif stream in self._blocked:
            self._pump(stream)

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        if not stream_id or len(payload) != 5:
            raise f.H2Error(f.PROTOCOL_ERROR, "a malformed PRIORITY")
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._reset(stream, f.PROTOCOL_ERROR)
            else:
                self._write(f.rst_stream(stream_id, f.PROTOCOL_ERROR))

    def _on_ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id or len(payload) != 8:
            raise f.H2Error(f.PROTOCOL_ERROR, "a malformed PING")
        if not flags & f.ACK:
            if not self._pings.take():
                raise self._calm("pings", "too many PINGs")
            self._write(f.frame(f.PING, f.ACK, 0, payload))

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "a SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "SETTINGS not in 6-byte entries")
        if self._settings_seen and not self._settings.take():
            raise self._calm("settings", "too many SETTINGS")
        self._settings_seen = True
        initial_window = None
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.H2Error(f.FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                initial_window = value
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise f.H2Error(f.PROTOCOL_ERROR, f"a max frame size of {value}")
                self._peer_max_frame = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise f.H2Error(f.PROTOCOL_ERROR, f"ENABLE_PUSH of {value}")
        self._write(f.SETTINGS_ACK)
        if initial_window is not None:  # the last value is the one that holds: one pass
            self._set_initial_window(initial_window)

    def _set_initial_window(self, value: int) -> None:
        delta = value - self._peer_initial_window
        self._peer_initial_window = value
        if not delta:
            return
        for stream in self.streams.values():
            stream.window += delta
            if stream.window > f.MAX_WINDOW:
                raise f.H2Error(f.FLOW_CONTROL_ERROR, f"stream {stream.id}'s window overflowed")
        for stream in list(self._blocked):
            self._pump(stream)

    # -- frames out -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def answer(self, stream: Stream, message: bytes) -> None:
        """A unary call's response: headers, one message, trailers with status 0."""
        if self.streams.get(stream.id) is not stream:
            return  # reset by the client meanwhile
        size = len(message) + 5
        if (
            not stream.headers_sent
            and size <= self._send_window
            and size <= stream.window
            and size <= self._peer_max_frame
        ):  # all of it fits: one write, no bookkeeping
            self._send_window -= size
            sid = stream.id
            self._write(
                f.head(len(RESPONSE_HEADERS), f.HEADERS, f.END_HEADERS, sid)
                + RESPONSE_HEADERS
                + f.head(size, f.DATA, 0, sid)
                + b"\x00"
                + len(message).to_bytes(4, "big")
                + message
                + f.head(len(TRAILERS_OK), f.HEADERS, _OK_TRAILERS_FLAGS, sid)
                + TRAILERS_OK
            )
            self._close(stream)
            return
        self.send_message(stream, message)
        self.finish(stream, TRAILERS_OK)

    def send_message(self, stream: Stream, message: bytes) -> None:
        """One message on the stream, queued behind flow control when it must wait."""
        if self.streams.get(stream.id) is not stream:
            return
        self._send_headers(stream)
        stream.backlog += b"\x00" + len(message).to_bytes(4, "big") + message
        self._pump(stream)

    def finish(self, stream: Stream, trailer_fields: bytes) -> None:
        """Ends the stream with trailers (after any message still waiting for window)."""
        if self.streams.get(stream.id) is not stream:
            return
        if not stream.headers_sent:  # trailers-only: one block with :status and the status
            stream.headers_sent = True
            stream.trailers = RESPONSE_HEADERS + trailer_fields
        else:
            stream.trailers = trailer_fields
        self._pump(stream)

    def refuse(self, stream: Stream, block: bytes) -> None:
        """Answers at once with a complete header block; the body, if any, is dropped."""
        stream.refused = True
        stream.body = bytearray()
        self.consumed(stream, stream.held)
        stream.headers_sent = True
        stream.trailers = block
        self._pump(stream)

    def timed_out(self, stream: Stream) -> None:
        """A unary request whose body did not end in time."""
        count("request_body_timeout")
        seconds = self.limits.request_body_timeout_s
        message = f"the request did not end within {seconds:g} s"
        self.refuse(stream, trailers_only(GRPC_DEADLINE_EXCEEDED, message))

    def _answer_at_once(self, stream_id: int, block: bytes, ended: bool) -> None:
        """A complete answer on a stream never opened as a call (its headers could not be)."""
        self._write(f.frame(f.HEADERS, _OK_TRAILERS_FLAGS, stream_id, block))
        if not ended:
            self._write(f.rst_stream(stream_id, f.NO_ERROR))
        self._remember(stream_id, client_ended=ended)

    def _refuse_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM for a stream never opened as a call (its later frames are dropped)."""
        self._write(f.rst_stream(stream_id, code))
        self._remember(stream_id, client_ended=False)

    def _send_headers(self, stream: Stream) -> None:
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(f.frame(f.HEADERS, f.END_HEADERS, stream.id, RESPONSE_HEADERS))

    def _pump(self, stream: Stream) -> None:
        """Sends what the windows allow; the trailers once nothing waits before them."""
        while stream.backlog:
            size = min(len(stream.backlog), self._send_window, stream.window, self._peer_max_frame)
            if size <= 0:
                self._blocked.add(stream)
                return
            chunk = bytes(stream.backlog[:size])
            del stream.backlog[:size]
            self._send_window -= size
            stream.window -= size
            self._write(f.frame(f.DATA, 0, stream.id, chunk))
        self._blocked.discard(stream)
        if stream.writable is not None:
            stream.writable.set()
        if stream.trailers is not None:
            self._write(f.frame(f.HEADERS, _OK_TRAILERS_FLAGS, stream.id, stream.trailers))
            if not stream.ended:  # the client may stop sending: its request will not be read
                self._write(f.rst_stream(stream.id, f.NO_ERROR))
                stream.reset_sent = True
            self._close(stream)

    async def writable(self, stream: Stream) -> None:
        """Waits until the stream's backlog has gone out (a streaming writer's back-pressure)."""
        while stream.backlog and self.streams.get(stream.id) is stream:
            if stream.writable is None:
                stream.writable = asyncio.Event()
            stream.writable.clear()
            await stream.writable.wait()

    def _reset(self, stream: Stream, code: int) -> None:
        """A stream error (RFC 9113 §5.4.2): that stream ends with RST_STREAM, its call is
        cancelled; the connection goes on."""
        self.cancel(stream)
        self._write(f.rst_stream(stream.id, code))
        stream.reset_sent = True
        self._close(stream)

    @staticmethod
    def cancel(stream: Stream) -> None:
        """Cancels the stream's call and lets go of its task at once: a cancelled task's
        exception, traceback and frames refer to the stream, and the stream to the task
        would make a cycle that only a full garbage collection frees."""
        task, stream.task = stream.task, None
        if task is not None:
            task.cancel()

    def _close(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self._blocked.discard(stream)
        if stream.held:
            self.consumed(stream, stream.held)
        if stream.messages is not None:
            stream.messages = None
        if stream.writable is not None:
            stream.writable.set()
        self._remember(stream.id, client_ended=stream.ended and not stream.reset_sent)
        if not self.streams:
            self.idle.set()
            self._idle_since = time.monotonic()
            if self.draining and self.transport is not None:
                self.loop.call_soon(self.close)

    def _remember(self, stream_id: int, client_ended: bool) -> None:
        """Whether a closed stream's client had ended it (then frames on it break the
        rules) or we did first (then its frames may still be on their way)."""
        self._closed[stream_id] = client_ended
        if len(self._closed) > CLOSED_MEMORY:
            oldest = next(iter(self._closed))
            del self._closed[oldest]
            self._forgotten = max(self._forgotten, oldest)

    # -- the connection as a whole --------------------------------------------------------

    def _tick(self) -> None:
        """Once a second: the handshake, idle and request-body timeouts."""
        self._timer = None
        if self.transport is None or self.failed:
            return
        now = time.monotonic()
        limits = self.limits
        if not self._settings_seen and now - self._made > limits.handshake_timeout_s:
            count("handshake_timeout")
            self._goaway_and_close(f.NO_ERROR, "no HTTP/2 handshake in time")
            return
        partial_since = self._partial_since
        if partial_since is not None and now - partial_since > limits.partial_frame_timeout_s:
            count("partial_frame_timeout")
            self._goaway_and_close(f.NO_ERROR, "a frame not finished in time")
            return
        if not self.streams and now - self._idle_since > limits.idle_timeout_s:
            count("idle_timeout")
            self.drain("idle")
        late = now - limits.request_body_timeout_s
        for stream in list(self.streams.values()):
            unary_body_pending = stream.messages is None and not stream.ended
            if unary_body_pending and not stream.refused and stream.opened < late:
                self.timed_out(stream)
        self._timer = self.loop.call_later(TICK_S, self._tick)

    def drain(self, reason: str = "server shutting down") -> None:
        """GOAWAY: calls already started finish, new ones are refused; closes when idle."""
        if self.draining:
            return
        self.draining = True
        self._write(f.goaway(self.last_stream_id, f.NO_ERROR, reason))
        if not self.streams:
            self.loop.call_soon(self.close)

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        ERRORS.closing(self.peer, code, reason)
        self._goaway_and_close(code, reason)

    def _goaway_and_close(self, code: int, reason: str) -> None:
        """GOAWAY, then the socket closes once it has gone: our side is shut at once (FIN
        after the GOAWAY) while input is read and dropped for a moment. Closing with unread
        input would send a TCP reset, which can destroy the GOAWAY before it is read."""
        self.failed = True
        for stream in list(self.streams.values()):
            self.cancel(stream)
        self._write(f.goaway(self.last_stream_id, code, reason))
        self._flush()
        transport = self.transport
        if transport is None:
            return
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)
