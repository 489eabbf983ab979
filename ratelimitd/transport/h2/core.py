"""The HTTP/2 server's protocol core, sans I/O: bytes in, events out; calls in, bytes out.

`ServerCore.receive(data)` reads frames and tells the layer above what happened through its
`Events` (a stream opened, request bytes arrived, a request ended, a stream was cancelled);
the layer above answers through `answer`, `send_message`, `finish` and `refuse`, and takes
the bytes to write with `data_to_send()`. Nothing here touches a socket, a loop or a task, so
the core can be driven by asyncio (connection.py), by a test, or by a client of its own.

It is written in the spirit of python-hyper's `h2`, but for the one job of a gRPC server:
- each stream's state follows RFC 9113 §5.1, as stream.py's `TRANSITIONS` table says;
- frames are read by `frames.next_frame` (checked against hyperframe) and dispatched on
  their type inline, the hot path being HEADERS and DATA;
- every limit on a client is named in limits.py and counted when it bites;
- flow-control credit goes back to the client only as the layer above consumes request
  bytes (`consumed`), so what one connection can make us hold is bounded by its windows.

Errors: a connection error raises `frames.H2Error` inside and ends the connection with
GOAWAY (`fail`); a stream error resets that stream only (RST_STREAM) and the connection goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import time
from enum import Enum
from typing import Generic, Protocol, TypeVar

import hpack

from ratelimitd.transport.h2 import frames as f
from ratelimitd.transport.h2.headers import (
    RESPONSE_HEADERS,
    TRAILERS_OK,
    Headers,
    Malformed,
    RequestHead,
    RequestHeaders,
    TooLarge,
)
from ratelimitd.transport.h2.limits import DEFAULT_LIMITS, ERRORS, Limits, TokenBucket, count
from ratelimitd.transport.h2.stream import Stream, StreamEvent, StreamState

STREAM_WINDOW = 1 << 20  # what each stream may send before we refill (a refill at half)
CLOSED_MEMORY = 1024  # streams closed early remembered (1-2x this), to tell late frames
SKIPPED_MEMORY = 64  # ranges of stream ids a client skipped, remembered
HARD_HEADER_LIST_FACTOR = 4  # decoding stops (a connection error) at 4 x max_header_list

_END_FLAGS = f.END_HEADERS | f.END_STREAM

# A unary answer's frames around its message, each packed in one go (they differ only in the
# stream id and the message's size): HEADERS with the response headers, then the DATA frame's
# head and the message's 5-byte prefix; after the message, HEADERS with the OK trailers. A
# frame head is 5 fixed bytes (length, type, flags) and the stream id.
_ANSWER_HEAD = struct.Struct(f">5sI{len(RESPONSE_HEADERS)}sHBBBIBI")
_RESPONSE_HEADERS_START = f.head(len(RESPONSE_HEADERS), f.HEADERS, f.END_HEADERS, 0)[:5]
_ANSWER_TAIL = struct.Struct(f">5sI{len(TRAILERS_OK)}s")
_TRAILERS_OK_START = f.head(len(TRAILERS_OK), f.HEADERS, _END_FLAGS, 0)[:5]


S = TypeVar("S", bound=Stream)


class Events(Protocol[S]):
    """What the core tells the layer above (connection.py), and asks of it."""

    def new_stream(
        self, stream_id: int, head: RequestHead, window: int, content_length: int | None
    ) -> S:
        """A stream object for a request whose headers were read (a `Stream` subclass; the
        class itself will do, which spares a call on every request)."""

    def parse_head(self, headers: Headers) -> RequestHead:
        """What a decoded header block says (once per distinct block)."""

    def output_ready(self) -> None:
        """Bytes are waiting in `data_to_send()` (called on the first since the last take)."""

    def streaming_request_opened(self, stream: S) -> None:
        """A streaming request's headers have come (`RequestHead.streaming`): its bytes will
        go up as they come (`request_data`). A unary request is told of once, at its end;
        one whose head carries a refusal is answered with it by the core."""

    def request_data(self, stream: S) -> None:
        """More of a streaming request is in `stream.body`."""

    def request_ended(self, stream: S, body: bytes | None) -> None:
        """The client ended its request: a unary request with its whole body (already
        credited back to the client); a streaming one with None."""

    def request_too_large(self, stream: S) -> None:
        """The request's body grew past the largest message."""

    def request_timed_out(self, stream: S) -> None:
        """A unary request's body did not end within the request-body timeout."""

    def stream_cancelled(self, stream: S) -> None:
        """The stream ended before its answer: whatever works on it may stop."""

    def stream_writable(self, stream: S) -> None:
        """The stream's backlog has gone out."""

    def stream_closed(self, stream: S) -> None:
        """The stream has closed (answered, reset, or refused)."""

    def streams_changed(self, busy: bool) -> None:
        """The first stream opened (busy) or the last one closed (not busy)."""

    def close_requested(self, after_error: bool) -> None:
        """The connection should close: after a GOAWAY for an error (input is to be read
        and dropped for a moment), or drained and idle."""

    def header_list_refusal(self, message: str) -> bytes:
        """The complete answer (header block) to a request whose header list is too large."""


class ServerCore(Generic[S]):
    """One HTTP/2 server connection's state, from the preface to the GOAWAY."""

    def __init__(self, events: Events[S], max_body: int, limits: Limits = DEFAULT_LIMITS) -> None:
        self.events = events
        self.max_body = max_body  # request bytes one stream may hold (its largest message)
        self.limits = limits
        self.streams: dict[int, S] = {}
        self.last_stream_id = 0
        self.draining = False  # GOAWAY sent: no new streams
        self.failed = False  # GOAWAY for an error sent: input is dropped until the close
        self.peer = ""
        self._buffer = b""
        self._preface_seen = False
        self._settings_seen = False
        self._headers = RequestHeaders(
            events.parse_head,
            limits.max_header_list,
            limits.max_header_list * HARD_HEADER_LIST_FACTOR,
            limits.remembered_blocks,
            limits.remembered_block_size,
        )
        # stream, flags, block so far, CONTINUATION frames so far, depends on itself
        self._continuing: tuple[int, int, bytearray, int, bool] | None = None
        # Closed streams, to tell late frames from wrong ones: those closed before their client
        # had ended them (frames may still be on their way), and the ids a client skipped
        # (never opened); any other id below the last is a stream the client had ended.
        self._closed_early: dict[int, None] = {}
        self._skipped: list[tuple[int, int]] = []  # (first, last) ids, both odd
        self._forgotten = 0  # closed streams up to this id may have been forgotten
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._receive_window = f.DEFAULT_WINDOW
        self._credit = 0  # consumed request bytes not yet given back to the connection window
        self._credit_threshold = limits.connection_buffer // 16
        self._blocked: set[S] = set()
        self._out: list[bytes] = []
        self._resets = TokenBucket(limits.resets_per_s, limits.resets_burst)
        self._empty_frames = TokenBucket(limits.empty_frames_per_s, limits.empty_frames_burst)
        self._pings = TokenBucket(limits.pings_per_s, limits.pings_burst)
        self._settings = TokenBucket(limits.settings_per_s, limits.settings_burst)
        self._made = self._idle_since = time.monotonic()
        self._partial_since: float | None = None  # since when a frame is incomplete

    # -- the connection as a whole --------------------------------------------------------

    def start(self, refuse: bool = False) -> None:
        """Our SETTINGS (and the connection window); with `refuse`, GOAWAY at once (over the
        connection limit)."""
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
        if refuse:
            count("connections")
            self._goaway(f.ENHANCE_YOUR_CALM, "too many connections")
            return
        if self.limits.connection_buffer > f.DEFAULT_WINDOW:  # (it cannot start smaller)
            self._write(f.window_update(0, self.limits.connection_buffer - f.DEFAULT_WINDOW))
            self._receive_window = self.limits.connection_buffer

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)

    def receive(self, data: bytes) -> bool:
        """Reads the frames in `data` (after what was left of earlier data), at most
        `frames_per_read` of them: whether complete frames are left (call `resume()` later,
        after the others have had their turn)."""
        if self.failed:
            return False  # read and dropped until the close, so that the GOAWAY is not lost
        return self._process(self._buffer + data if self._buffer else data)

    def resume(self) -> bool:
        """Reads on where `receive` stopped; as `receive`."""
        return False if self.failed else self._process(self._buffer)

    def tick(self, now: float) -> None:
        """The handshake, partial-frame, idle and request-body timeouts (about once a second)."""
        if self.failed:
            return
        limits = self.limits
        if not self._settings_seen and now - self._made > limits.handshake_timeout_s:
            count("handshake_timeout")
            self._goaway(f.NO_ERROR, "no HTTP/2 handshake in time")
            return
        partial_since = self._partial_since
        if partial_since is not None and now - partial_since > limits.partial_frame_timeout_s:
            count("partial_frame_timeout")
            self._goaway(f.NO_ERROR, "a frame not finished in time")
            return
        if not self.streams and now - self._idle_since > limits.idle_timeout_s:
            count("idle_timeout")
            self.drain("idle")
        late = now - limits.request_body_timeout_s
        for stream in list(self.streams.values()):
            unary_body_pending = not stream.streaming and not stream.ended
            if unary_body_pending and not stream.refused and stream.opened < late:
                count("request_body_timeout")
                self.events.request_timed_out(stream)

    def drain(self, reason: str = "server shutting down") -> None:
        """GOAWAY: requests already started finish, new ones are refused; closes when idle."""
        if self.draining:
            return
        self.draining = True
        self._write(f.goaway(self.last_stream_id, f.NO_ERROR, reason))
        if not self.streams:
            self.events.close_requested(after_error=False)

    def connection_lost(self) -> None:
        for stream in list(self.streams.values()):
            self.events.stream_cancelled(stream)
        self.streams.clear()
        self._blocked.clear()

    def fail(self, code: int, reason: str) -> None:
        """A connection error: GOAWAY with `code`, every stream cancelled; logged (a few)."""
        ERRORS.closing(self.peer, code, reason)
        self._goaway(code, reason)

    def _goaway(self, code: int, reason: str) -> None:
        self.failed = True
        for stream in list(self.streams.values()):
            self.events.stream_cancelled(stream)
        self._write(f.goaway(self.last_stream_id, code, reason))
        self.events.close_requested(after_error=True)

    def _process(self, buffer: bytes) -> bool:
        try:
            position, more = self._read_frames(buffer)
        except f.H2Error as exc:
            self.fail(exc.code, str(exc))
            return False
        except hpack.OversizedHeaderListError as exc:
            count("header_list")
            self.fail(f.ENHANCE_YOUR_CALM, f"a header list far over the limit: {exc}")
            return False
        except hpack.HPACKError as exc:
            self.fail(f.COMPRESSION_ERROR, f"bad header block: {exc}")
            return False
        self._buffer = buffer[position:]
        if not (self._buffer or self._continuing):
            self._partial_since = None
        elif self._partial_since is None:  # slowloris: a frame begun, to be finished in time
            self._partial_since = time.monotonic()
        return more

    # -- frames in ------------------------------------------------------------------------

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

    def _calm(self, limit: str, reason: str) -> f.H2Error:
        """A flood: the connection ends with ENHANCE_YOUR_CALM."""
        count(limit)
        return f.H2Error(f.ENHANCE_YOUR_CALM, reason)

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if not self._settings_seen:
            raise f.H2Error(f.PROTOCOL_ERROR, "the first frame was not SETTINGS")
        block = f.unpad(flags, payload) if flags & f.PADDED else payload
        self_dependent = False
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS too short for its priority")
            self_dependent = int.from_bytes(block[:4], "big") & 0x7FFFFFFF == stream_id
            block = block[5:]
        if flags & f.END_HEADERS:
            if stream_id > self.last_stream_id and stream_id & 1:  # a new stream, the usual
                self._open(stream_id, flags, block, self_dependent)
            else:
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
        unreadable: Malformed | TooLarge | None = None
        try:
            head, content_length = self._headers.read(block)  # always: HPACK stays in step
        except (Malformed, TooLarge) as exc:
            unreadable = exc
        if stream_id > self.last_stream_id + 2:  # the ones between are closed, never opened
            self._skip(self.last_stream_id + 2, stream_id - 2)
        self.last_stream_id = stream_id  # a bad HPACK block (raised above) opens nothing
        if unreadable is not None:
            self._refuse_unreadable(stream_id, unreadable, ended)
            return
        if self_dependent:
            self._refuse_stream(stream_id, f.PROTOCOL_ERROR)
            return
        if self.draining or len(self.streams) >= self.limits.max_concurrent_streams:
            if not self._resets.take():
                raise self._calm("resets", "too many streams refused")
            self._refuse_stream(stream_id, f.REFUSED_STREAM)
            return
        stream = self.events.new_stream(stream_id, head, self._peer_initial_window, content_length)
        if ended:  # so that a refusal needs no RST_STREAM
            stream.advance(StreamEvent.RECV_END_STREAM)
        self.streams[stream_id] = stream
        if len(self.streams) == 1:
            self.events.streams_changed(busy=True)
        if head.refusal is not None:
            self.refuse(stream, head.refusal)
        elif head.streaming:
            stream.streaming = True
            self.events.streaming_request_opened(stream)
        if ended:
            self._end_of_request(stream)

    def _refuse_unreadable(self, stream_id: int, error: Malformed | TooLarge, ended: bool) -> None:
        if isinstance(error, Malformed):
            self._refuse_stream(stream_id, f.PROTOCOL_ERROR)
        else:
            count("header_list")
            self._answer_at_once(stream_id, self.events.header_list_refusal(str(error)), ended)

    def _on_trailers(self, stream: S, flags: int, block: bytes) -> None:
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
            stream.advance(StreamEvent.RECV_END_STREAM)
            self._end_of_request(stream)

    def _on_headers_of_closed(self, stream_id: int, block: bytes) -> None:
        """HEADERS on a stream at or below the last one opened: trailers still in flight on a
        stream we answered early are fine; anything else breaks the rules."""
        with contextlib.suppress(Malformed):  # decoded all the same: HPACK stays in step
            self._headers.read_trailers(block)
        closed = self._closed_kind(stream_id)
        if closed is ClosedKind.ENDED:
            raise f.H2Error(f.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        if closed is ClosedKind.SKIPPED:
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
        ended = flags & f.END_STREAM
        if not payload and not ended and not self._empty_frames.take():
            raise self._calm("empty_frames", "too many empty frames")
        data = f.unpad(flags, payload) if flags & f.PADDED else payload
        stream.received += len(data)
        expected = stream.content_length
        if expected is not None and (
            stream.received > expected or (ended and stream.received != expected)
        ):
            self._give_credit(len(payload))
            self._reset(stream, f.PROTOCOL_ERROR)
            return
        if not ended:
            self._give_credit(len(payload) - len(data))
            self._keep(stream, data)
            stream.unacknowledged += len(payload)
            if stream.unacknowledged >= STREAM_WINDOW // 2:
                self._write(f.window_update(stream_id, stream.unacknowledged))
                stream.unacknowledged = 0
        elif stream.body or stream.streaming or stream.refused or len(data) > self.max_body:
            self._give_credit(len(payload) - len(data))
            self._keep(stream, data)
            if stream.id in self.streams:  # (not answered and closed meanwhile)
                stream.advance(StreamEvent.RECV_END_STREAM)
            self._end_of_request(stream)
        else:  # the whole request in this one frame, the usual unary call: nothing is kept
            stream.advance(StreamEvent.RECV_END_STREAM)
            self._give_credit(len(payload))
            self.events.request_ended(stream, data)

    def _on_data_of_closed(self, stream_id: int) -> None:
        if stream_id > self.last_stream_id or not stream_id & 1:
            raise f.H2Error(f.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        if self._closed_kind(stream_id) in (ClosedKind.ENDED, ClosedKind.SKIPPED):
            raise f.H2Error(f.STREAM_CLOSED, f"DATA on closed stream {stream_id}")
        # else: on a stream we answered or reset early; it was on its way

    def _keep(self, stream: S, data: bytes) -> None:
        """Holds a request's bytes until the layer above takes them (or drops them)."""
        if stream.refused:
            self._give_credit(len(data))
        elif len(stream.body) + len(data) > self.max_body:
            self._give_credit(len(data))
            self.events.request_too_large(stream)
        else:
            stream.body += data
            stream.held += len(data)
            if stream.streaming:
                self.events.request_data(stream)

    def consumed(self, stream: S, size: int) -> None:
        """`size` bytes of the stream's request were taken by the layer above: credit for more."""
        size = min(size, stream.held)
        stream.held -= size
        self._give_credit(size)

    def _give_credit(self, size: int) -> None:
        """Gives consumed bytes back to the connection window, a sixteenth of it at a time."""
        self._credit += size
        if self._credit >= self._credit_threshold:
            self._write(f.window_update(0, self._credit))
            self._receive_window += self._credit
            self._credit = 0

    def _end_of_request(self, stream: S) -> None:
        """The client ended a request whose bytes were kept: they go up with the news."""
        if stream.refused:
            return
        if stream.streaming:
            self.events.request_ended(stream, None)
            return
        body = bytes(stream.body)
        stream.body = bytearray()
        self._give_credit(stream.held)
        stream.held = 0
        self.events.request_ended(stream, body)

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
        stream.advance(StreamEvent.RECV_RST_STREAM)
        self.events.stream_cancelled(stream)
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
        if not self._out:
            self.events.output_ready()
        self._out.append(data)

    def answer(self, stream: S, message: bytes) -> None:
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
            head = _ANSWER_HEAD.pack(
                _RESPONSE_HEADERS_START, sid, RESPONSE_HEADERS,
                size >> 8, size & 0xFF, f.DATA, 0, sid, 0, size - 5,
            )  # fmt: skip
            self._write(head + message + _ANSWER_TAIL.pack(_TRAILERS_OK_START, sid, TRAILERS_OK))
            self._ended_by_us(stream)
            return
        self.send_message(stream, message)
        self.finish(stream, TRAILERS_OK)

    def send_message(self, stream: S, message: bytes) -> None:
        """One message on the stream, queued behind flow control when it must wait."""
        if self.streams.get(stream.id) is not stream:
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(f.frame(f.HEADERS, f.END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.backlog += b"\x00" + len(message).to_bytes(4, "big") + message
        self._pump(stream)

    def finish(self, stream: S, trailer_fields: bytes) -> None:
        """Ends the stream with trailers (after any message still waiting for window)."""
        if self.streams.get(stream.id) is not stream:
            return
        if not stream.headers_sent:  # trailers-only: one block with :status and the status
            stream.headers_sent = True
            stream.trailers = RESPONSE_HEADERS + trailer_fields
        else:
            stream.trailers = trailer_fields
        self._pump(stream)

    def refuse(self, stream: S, block: bytes) -> None:
        """Answers at once with a complete header block; the body, if any, is dropped."""
        stream.refused = True
        stream.body = bytearray()
        self.consumed(stream, stream.held)
        stream.headers_sent = True
        stream.trailers = block
        self._pump(stream)

    def writable(self, stream: S) -> bool:
        """Whether nothing of the stream waits for window (or the stream has closed)."""
        return not stream.backlog or self.streams.get(stream.id) is not stream

    def _answer_at_once(self, stream_id: int, block: bytes, ended: bool) -> None:
        """A complete answer on a stream never opened as a call (its headers could not be)."""
        self._write(f.frame(f.HEADERS, _END_FLAGS, stream_id, block))
        if not ended:
            self._write(f.rst_stream(stream_id, f.NO_ERROR))
        if not ended:
            self._remember_early(stream_id)

    def _refuse_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM for a stream never opened as a call (its later frames are dropped)."""
        self._write(f.rst_stream(stream_id, code))
        self._remember_early(stream_id)

    def _pump(self, stream: S) -> None:
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
        self.events.stream_writable(stream)
        if stream.trailers is not None:
            self._write(f.frame(f.HEADERS, _END_FLAGS, stream.id, stream.trailers))
            self._ended_by_us(stream)

    def _ended_by_us(self, stream: S) -> None:
        """Our END_STREAM has gone; a client still sending is told to stop (RST_STREAM
        NO_ERROR, RFC 9113 §8.1): its request will not be read."""
        if stream.advance(StreamEvent.SEND_END_STREAM) is StreamState.HALF_CLOSED_LOCAL:
            self._write(f.rst_stream(stream.id, f.NO_ERROR))
            stream.advance(StreamEvent.SEND_RST_STREAM)
            stream.reset_sent = True
        self._close(stream)

    def _reset(self, stream: S, code: int) -> None:
        """A stream error (RFC 9113 §5.4.2): that stream ends with RST_STREAM, the layer above
        is told to stop working on it; the connection goes on."""
        self.events.stream_cancelled(stream)
        self._write(f.rst_stream(stream.id, code))
        stream.advance(StreamEvent.SEND_RST_STREAM)
        stream.reset_sent = True
        self._close(stream)

    def _close(self, stream: S) -> None:
        self.streams.pop(stream.id, None)
        if self._blocked:
            self._blocked.discard(stream)
        if stream.held:
            self.consumed(stream, stream.held)
        self.events.stream_closed(stream)
        if not stream.ended or stream.reset_sent:
            self._remember_early(stream.id)
        if not self.streams:
            self._idle_since = time.monotonic()
            self.events.streams_changed(busy=False)
            if self.draining:
                self.events.close_requested(after_error=False)

    def _remember_early(self, stream_id: int) -> None:
        """A stream closed before its client had ended it: its frames may still be on their
        way. (One the client had ended needs no record: see `_closed_kind`.)"""
        early = self._closed_early
        early[stream_id] = None
        if len(early) >= 2 * CLOSED_MEMORY:  # keep the newest half: O(1) a stream, amortized
            self._forgotten = max(self._forgotten, *itertools.islice(early, CLOSED_MEMORY))
            self._closed_early = dict.fromkeys(itertools.islice(early, CLOSED_MEMORY, None))

    def _skip(self, first: int, last: int) -> None:
        self._skipped.append((first, last))
        if len(self._skipped) > SKIPPED_MEMORY:
            _, forgotten = self._skipped.pop(0)
            self._forgotten = max(self._forgotten, forgotten)

    def _closed_kind(self, stream_id: int) -> ClosedKind:
        """What became of a client stream id at or below the last one opened."""
        if stream_id in self._closed_early or stream_id <= self._forgotten:
            return ClosedKind.EARLY
        for first, last in reversed(self._skipped):
            if first <= stream_id <= last:
                return ClosedKind.SKIPPED
        return ClosedKind.ENDED


class ClosedKind(Enum):
    EARLY = "closed before its client ended it, or long ago (frames may be late)"
    SKIPPED = "never opened: a later id was used first"
    ENDED = "closed after its client had ended it"
