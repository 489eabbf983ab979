"""One HTTP/2 connection carrying gRPC calls: frames in, calls started, answers out.

Server side of RFC 9113 for what gRPC clients send: no server push, no priorities (PRIORITY
frames and fields are read and ignored), one header block per request plus optional
trailers. Flow control is kept both ways. Answers written during one turn of the event loop
leave in one `write`, which is how a batch of decisions answered together costs one system
call instead of one per call.

Limits that keep a client from holding memory: at most `MAX_STREAMS` calls at a time per
connection (more are refused with REFUSED_STREAM, which clients retry), a request message of
at most `max_message` bytes (RESOURCE_EXHAUSTED past it, the rest of the body dropped as it
arrives), header lists of at most `MAX_HEADER_LIST` bytes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import hpack

from ratelimitd.logs import get_logger
from ratelimitd.server.h2 import frames as f
from ratelimitd.server.h2.headers import RESPONSE_HEADERS, TRAILERS_OK, RequestHeaders

if TYPE_CHECKING:
    from ratelimitd.server.h2.calls import Calls, RequestHead

log = get_logger(__name__)

MAX_STREAMS = 1000
MAX_HEADER_LIST = 64 * 1024
STREAM_WINDOW = 1 << 20  # what each stream may send before we refill (a refill at half)
CONNECTION_WINDOW = 16 << 20
OUR_SETTINGS = {
    f.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
    f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
    f.ENABLE_PUSH: 0,
}

_OK_TRAILERS_FLAGS = f.END_HEADERS | f.END_STREAM


class Stream:
    """One call's state on its connection."""

    __slots__ = (
        "backlog",
        "body",
        "ended",
        "head",
        "headers_sent",
        "id",
        "messages",
        "refused",
        "task",
        "trailers",
        "unacknowledged",
        "window",
        "writable",
    )

    def __init__(self, stream_id: int, head: RequestHead, window: int) -> None:
        self.id = stream_id
        self.head = head
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
    def __init__(self, calls: Calls, on_close: Callable[[Connection], None]) -> None:
        self.calls = calls
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.draining = False  # GOAWAY sent: no new streams
        self._buffer = b""
        self._preface_seen = False
        self._headers = RequestHeaders(MAX_HEADER_LIST, calls.parse_head)
        self._continuing: tuple[int, int, bytearray] | None = None  # stream, flags, block so far
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._receive_window = f.DEFAULT_WINDOW
        self._blocked: set[Stream] = set()
        self._out: list[bytes] = []
        self._flush_scheduled = False
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
        self._write(f.settings(OUR_SETTINGS))
        self._write(f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))
        self._receive_window = CONNECTION_WINDOW

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in list(self.streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self._blocked.clear()
        self.idle.set()
        self.transport = None
        self._on_close(self)

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests meanwhile (what
        is written is bounded by flow control only for DATA, not for headers)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        try:
            position = self._read_frames(buffer)
        except f.H2Error as exc:
            self._fail(exc.code, str(exc))
            return
        except hpack.HPACKError as exc:
            self._fail(f.COMPRESSION_ERROR, f"bad header block: {exc}")
            return
        self._buffer = buffer[position:]

    def _read_frames(self, buffer: bytes) -> int:
        position = 0
        if not self._preface_seen:
            if len(buffer) < len(f.PREFACE):
                if not f.PREFACE.startswith(buffer):
                    raise f.H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0
            if not buffer.startswith(f.PREFACE):
                raise f.H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            position = len(f.PREFACE)
            self._preface_seen = True
        end = len(buffer)
        while end - position >= f.HEADER_SIZE:
            length = int.from_bytes(buffer[position : position + 3], "big")
            if length > f.DEFAULT_MAX_FRAME:
                raise f.H2Error(f.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            start = position + f.HEADER_SIZE
            if start + length > end:
                break
            kind = buffer[position + 3]
            flags = buffer[position + 4]
            stream_id = int.from_bytes(buffer[position + 5 : start], "big") & 0x7FFFFFFF
            payload = buffer[start : start + length]
            position = start + length
            if self._continuing is not None and kind != f.CONTINUATION:
                raise f.H2Error(f.PROTOCOL_ERROR, "a header block was interrupted")
            if kind == f.DATA:
                self._on_data(stream_id, flags, payload)
            elif kind == f.HEADERS:
                self._on_headers(stream_id, flags, payload)
            elif kind == f.CONTINUATION:
                self._on_continuation(stream_id, flags, payload)
            elif kind == f.WINDOW_UPDATE:
                self._on_window_update(stream_id, payload)
            elif kind == f.SETTINGS:
                self._on_settings(stream_id, flags, payload)
            elif kind == f.PING:
                if stream_id or length != 8:
                    raise f.H2Error(f.PROTOCOL_ERROR, "a malformed PING")
                if not flags & f.ACK:
                    self._write(f.frame(f.PING, f.ACK, 0, payload))
            elif kind == f.RST_STREAM:
                self._on_rst_stream(stream_id, payload)
            elif kind == f.GOAWAY:
                if stream_id:
                    raise f.H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
            elif kind == f.PRIORITY:
                if not stream_id or length != 5:
                    raise f.H2Error(f.PROTOCOL_ERROR, "a malformed PRIORITY")
            elif kind == f.PUSH_PROMISE:
                raise f.H2Error(f.PROTOCOL_ERROR, "a client cannot push")
            # unknown frame types are ignored (RFC 9113 §4.1)
        return position

    # -- frames in ------------------------------------------------------------------------

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & f.PADDED:
            if not payload or payload[0] >= len(payload):
                raise f.H2Error(f.PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & f.PRIORITY_FLAG:
            block = block[5:]
        if flags & f.END_HEADERS:
            self._on_header_block(stream_id, flags, block)
        else:
            self._continuing = (stream_id, flags, bytearray(block))

    def _on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, block = self._continuing
        block += payload
        if len(block) > MAX_HEADER_LIST:
            raise f.H2Error(f.ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & f.END_HEADERS:
            self._continuing = None
            self._on_header_block(stream_id, first_flags, bytes(block))

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        head = self._headers.read(block)  # always: the HPACK table must stay in step
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client end its half of the stream
            if stream.ended:
                raise f.H2Error(f.STREAM_CLOSED, f"HEADERS after END_STREAM on stream {stream_id}")
            if not flags & f.END_STREAM:
                raise f.H2Error(f.PROTOCOL_ERROR, "a second header block without END_STREAM")
            self._end_of_request(stream)
            return
        if stream_id <= self.last_stream_id or not stream_id & 1:
            if stream_id & 1:
                return  # a stream we already closed (reset or answered): nothing to do
            raise f.H2Error(f.PROTOCOL_ERROR, f"a client stream with even id {stream_id}")
        self.last_stream_id = stream_id
        if self.draining or len(self.streams) >= MAX_STREAMS:
            self._write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        stream = Stream(stream_id, head, self._peer_initial_window)
        stream.ended = bool(flags & f.END_STREAM)  # so that a refusal needs no RST_STREAM
        self.streams[stream_id] = stream
        self.idle.clear()
        if head.refusal is not None:
            self.refuse(stream, head.refusal)
        elif head.handler is not None and head.handler.request_streaming:
            stream.messages = asyncio.Queue()
            self.calls.start(self, stream, None)
        if flags & f.END_STREAM:
            self._end_of_request(stream)

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        self._receive_window -= len(payload)
        if self._receive_window < 0:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "the client sent past the connection window")
        if self._receive_window < CONNECTION_WINDOW // 2:
            self._write(f.window_update(0, CONNECTION_WINDOW - self._receive_window))
            self._receive_window = CONNECTION_WINDOW
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise f.H2Error(f.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # on a stream already answered or reset
        if stream.ended:
            raise f.H2Error(f.STREAM_CLOSED, f"DATA after END_STREAM on stream {stream_id}")
        data = self._unpad(flags, payload)
        if not stream.refused:
            # a unary request's whole body, a streaming one's message in progress
            if len(stream.body) + len(data) > self.calls.max_message + 5:
                self.calls.too_large(self, stream)
            else:
                stream.body += data
                if stream.messages is not None:
                    self.calls.feed(self, stream)
        if flags & f.END_STREAM:
            self._end_of_request(stream)
        else:
            stream.unacknowledged += len(payload)
            if stream.unacknowledged >= STREAM_WINDOW // 2:
                self._write(f.window_update(stream_id, stream.unacknowledged))
                stream.unacknowledged = 0

    def _end_of_request(self, stream: Stream) -> None:
        stream.ended = True
        if stream.refused:
            return
        if stream.messages is not None:
            stream.messages.put_nowait(None)
        else:
            self.calls.start(self, stream, bytes(stream.body))
            stream.body = bytearray()

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if not stream_id or len(payload) != 4:
            raise f.H2Error(f.PROTOCOL_ERROR, "a malformed RST_STREAM")
        stream = self.streams.get(stream_id)
        if stream is not None:
            if stream.task is not None:
                stream.task.cancel()
            self._close(stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not increment:
            raise f.H2Error(f.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
        if not stream_id:
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise f.H2Error(f.FLOW_CONTROL_ERROR, "the connection window overflowed")
            for blocked in list(self._blocked):
                self._pump(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.window += increment
            if stream.window > f.MAX_WINDOW:
                raise f.H2Error(f.FLOW_CONTROL_ERROR, f"stream {stream_id}'s window overflowed")
            if stream in self._blocked:
                self._pump(stream)

    def _on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "a SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "SETTINGS not in 6-byte entries")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.H2Error(f.FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise f.H2Error(f.PROTOCOL_ERROR, f"a max frame size of {value}")
                self._peer_max_frame = value
        self._write(f.SETTINGS_ACK)
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
        stream.headers_sent = True
        stream.trailers = block
        self._pump(stream)

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
            self._close(stream)

    async def writable(self, stream: Stream) -> None:
        """Waits until the stream's backlog has gone out (a streaming writer's back-pressure)."""
        while stream.backlog and self.streams.get(stream.id) is stream:
            if stream.writable is None:
                stream.writable = asyncio.Event()
            stream.writable.clear()
            await stream.writable.wait()

    def _close(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self._blocked.discard(stream)
        if stream.writable is not None:
            stream.writable.set()
        if not self.streams:
            self.idle.set()
            if self.draining and self.transport is not None:
                self.loop.call_soon(self.close)

    # -- the connection as a whole --------------------------------------------------------

    def drain(self) -> None:
        """GOAWAY: calls already started finish, new ones are refused; closes when idle."""
        if self.draining:
            return
        self.draining = True
        self._write(f.goaway(self.last_stream_id, f.NO_ERROR, "server shutting down"))
        if not self.streams:
            self.loop.call_soon(self.close)

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        log.warning("closing an HTTP/2 connection", peer=self.peer, error=code, reason=reason)
        self._write(f.goaway(self.last_stream_id, code, reason))
        self.close()
