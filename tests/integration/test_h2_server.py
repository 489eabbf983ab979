"""The native HTTP/2 server at the protocol level, where a grpcio client cannot reach.

The client is python-hyper's `h2`, which writes the frames (HPACK, flow control,
CONTINUATION, padding) and checks what the server sends against the protocol. Every frame
the server sends is also kept raw, with its header blocks decoded by a separate HPACK
decoder, so a test can see exactly what was sent on each stream (and what `h2` would hide,
such as frames on a stream it reset, or anything after a GOAWAY).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health_pb2

from ratelimitd.transport.h2 import frames as f
from ratelimitd.transport.h2.calls import MAX_QUEUED_MESSAGES
from ratelimitd.transport.h2.limits import DEFAULT_LIMITS, Limits
from ratelimitd.transport.h2.server import Http2Server
from tests.helpers import until
from tests.integration.conftest import StartServer
from tests.reliability.harness import rss_bytes

SERVICE = "test.Native"
ECHO = f"/{SERVICE}/Echo"
METADATUM = f"/{SERVICE}/Metadatum"
LARGE = f"/{SERVICE}/Large"
SLOW = f"/{SERVICE}/Slow"
MAX_MESSAGE = 1024
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 5}
"""
TIMEOUT = 10.0  # only so that a broken server fails a test instead of hanging it


def grpc_body(message: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return bytes((int(compressed),)) + len(message).to_bytes(4, "big") + message


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def random_text(size: int) -> str:
    """Text that HPACK's Huffman code cannot shrink much."""
    return "".join(random.Random(size).choices(string.ascii_letters + string.digits, k=size))


# -- the client --------------------------------------------------------------------------


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


def take_frames(buffer: bytearray) -> list[Frame]:
    """The complete frames at the start of `buffer`, removed from it."""
    out = []
    while len(buffer) >= f.HEADER_SIZE:
        length = int.from_bytes(buffer[:3], "big")
        if len(buffer) < f.HEADER_SIZE + length:
            break
        stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buffer[f.HEADER_SIZE : f.HEADER_SIZE + length])
        out.append(Frame(buffer[3], buffer[4], stream_id, payload))
        del buffer[: f.HEADER_SIZE + length]
    return out


@dataclass
class Response:
    """What the server sent on one stream, as read from the raw frames."""

    blocks: list[dict[str, str]] = field(default_factory=list)  # header blocks, in order
    data: bytearray = field(default_factory=bytearray)  # DATA payloads without padding
    data_frames: list[int] = field(default_factory=list)  # each DATA frame's payload size
    ended: bool = False  # END_STREAM seen
    reset: int | None = None  # the RST_STREAM code, if one came

    @property
    def status(self) -> int:
        """grpc-status, from the trailers (or the only block, for trailers-only)."""
        return int(self.blocks[-1]["grpc-status"])

    @property
    def messages(self) -> list[bytes]:
        """The complete messages so far."""
        out, data = [], bytes(self.data)
        while len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big"):
            assert data[0] == 0, "the server compressed a message"
            size = int.from_bytes(data[1:5], "big")
            out.append(data[5 : 5 + size])
            data = data[5 + size :]
        return out

    @property
    def message(self) -> bytes:
        """The one message of a unary response."""
        [message] = self.messages
        assert self.data == grpc_body(message), "not exactly one message"
        return message


class Client:
    """An HTTP/2 client on one connection: `h2` writes, every frame read is kept raw too.

    Made by `connect` (h2 sends the preface and SETTINGS) or `raw` (nothing is sent:
    the test writes bytes itself with `write`).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h2.connection.H2Connection | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn  # None once h2 has read a GOAWAY: it reads no further
        self.frames: list[Frame] = []  # every frame the server sent
        self.sent: list[Frame] = []  # every frame h2 wrote
        self.streams: dict[int, Response] = {}
        self.goaway: tuple[int, int] | None = None  # last stream id, error code
        self.ping_acks: list[bytes] = []
        self.closed = False  # the server closed the connection
        self._inbound = bytearray()
        self._decoder = hpack.Decoder()
        self._block: tuple[int, int, bytearray] | None = None  # stream, flags, block so far

    @classmethod
    async def connect(cls, port: int, settings: dict[int, int] | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        if settings:
            conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        conn.initiate_connection()
        client = cls(reader, writer, conn)
        client.flush()
        return client

    @classmethod
    async def raw(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, None)

    @property
    def h2(self) -> h2.connection.H2Connection:
        assert self.conn is not None
        return self.conn

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def flush(self) -> None:
        """Writes what h2 has to send."""
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)
            self.sent += take_frames(bytearray(data.removeprefix(f.PREFACE)))

    def start(
        self,
        path: str,
        *,
        metadata: list[tuple[str, str]] | None = None,
        method: str = "POST",
        content_type: str = "application/grpc",
        end_stream: bool = False,
    ) -> int:
        """Opens a stream with a request's headers; returns its id."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", content_type),
            ("te", "trailers"),
            *(metadata or []),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end_stream: bool = True) -> None:
        self.h2.send_data(stream_id, data, end_stream=end_stream)
        self.flush()

    def request(self, path: str, message: bytes, **headers: Any) -> int:
        stream_id = self.start(path, **headers)
        self.send(stream_id, grpc_body(message))
        return stream_id

    async def call(self, path: str, message: bytes, **headers: Any) -> Response:
        return await self.response(self.request(path, message, **headers))

    async def response(self, stream_id: int) -> Response:
        await self.wait_for(
            lambda: self.on(stream_id).ended or self.on(stream_id).reset is not None
        )
        return self.on(stream_id)

    async def ping(self, data: bytes) -> None:
        self.h2.ping(data)
        self.flush()
        await self.wait_for(lambda: data in self.ping_acks)

    def on(self, stream_id: int) -> Response:
        return self.streams.setdefault(stream_id, Response())

    def frames_on(self, stream_id: int) -> list[Frame]:
        return [frame for frame in self.frames if frame.stream_id == stream_id]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Reads until `condition` holds; fails if the server closes the connection first."""
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                assert not self.closed, "the server closed the connection"
                await self._read()

    async def wait_closed(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not self.closed:
                await self._read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def _read(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.closed = True
            return
        self._inbound += data
        for frame in take_frames(self._inbound):
            self._note(frame)
        if self.conn is not None:
            self._feed_h2(data)

    def _feed_h2(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            if self.goaway is None:
                raise
            self.conn = None  # h2 rejects frames after a GOAWAY; the raw frames go on
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None and event.flow_controlled_length is not None
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.conn = None
                return
        self.flush()

    def _note(self, frame: Frame) -> None:
        self.frames.append(frame)
        if frame.kind in (f.HEADERS, f.CONTINUATION):
            if frame.kind == f.HEADERS:
                assert not frame.flags & (f.PADDED | f.PRIORITY_FLAG), (
                    "the server never sends these"
                )
                self._block = (frame.stream_id, frame.flags, bytearray())
            assert self._block is not None and self._block[0] == frame.stream_id
            self._block[2].extend(frame.payload)
            if frame.flags & f.END_HEADERS:
                stream_id, flags, block = self._block
                self._block = None
                response = self.on(stream_id)
                fields = self._decoder.decode(bytes(block), raw=True)
                response.blocks.append({k.decode(): v.decode() for k, v in fields})
                response.ended |= bool(flags & f.END_STREAM)
        elif frame.kind == f.DATA:
            response = self.on(frame.stream_id)
            payload = frame.payload
            if frame.flags & f.PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            response.data += payload
            response.data_frames.append(len(frame.payload))
            response.ended |= bool(frame.flags & f.END_STREAM)
        elif frame.kind == f.RST_STREAM:
            self.on(frame.stream_id).reset = int.from_bytes(frame.payload, "big")
        elif frame.kind == f.GOAWAY:
            payload = frame.payload
            self.goaway = (int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big"))
        elif frame.kind == f.PING and frame.flags & f.ACK:
            self.ping_acks.append(frame.payload)


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens clients (`Client.connect`, or `Client.raw` with raw=True); closes them after."""
    clients: list[Client] = []

    async def open_client(port: int, raw: bool = False, **kwargs: Any) -> Client:
        client = await (Client.raw(port) if raw else Client.connect(port, **kwargs))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


# -- a native server with test handlers ---------------------------------------------------


class Service:
    """Handlers on raw bytes; the events let a test see into a call."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def echo(self, request: bytes, context: Any) -> bytes:
        return request

    async def metadatum(self, request: bytes, context: Any) -> bytes:
        """The value of the metadata key named by the request."""
        value = dict(context.invocation_metadata())[request.decode()]
        return value if isinstance(value, bytes) else value.encode()

    async def large(self, request: bytes, context: Any) -> bytes:
        return pattern(int(request))

    async def slow(self, request: bytes, context: Any) -> bytes:
        """Answers once `release` is set."""
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done"

    async def stalled(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """A streaming handler that reads none of its requests until `release` is set."""
        await self.release.wait()
        async for request in requests:
            yield request

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        behaviours = {
            "Echo": self.echo,
            "Metadatum": self.metadatum,
            "Large": self.large,
            "Slow": self.slow,
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(behaviour)
            for name, behaviour in behaviours.items()
        }
        handlers["Stalled"] = grpc.stream_stream_rpc_method_handler(self.stalled)
        return handlers


@dataclass
class Native:
    server: Http2Server
    port: int
    service: Service


StartNative = Callable[[Limits], Awaitable[Native]]


@pytest.fixture
async def native_with() -> AsyncIterator[StartNative]:
    """Starts a native server with the test handlers and the given limits."""
    servers: list[Http2Server] = []

    async def start(limits: Limits) -> Native:
        service = Service()
        server = Http2Server(MAX_MESSAGE, limits)
        server.add_registered_method_handlers(SERVICE, service.handlers())
        servers.append(server)
        return Native(server, await server.start("127.0.0.1", 0), service)

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def native(native_with: StartNative) -> Native:
    return await native_with(DEFAULT_LIMITS)


async def event_set(event: asyncio.Event) -> None:
    async with asyncio.timeout(TIMEOUT):
        await event.wait()


async def slow_call_started(native: Native, connect: Connect) -> tuple[Client, int]:
    """A client with a Slow call whose handler has started (and waits for `release`)."""
    client = await connect(native.port)
    stream_id = client.request(SLOW, b"")
    await event_set(native.service.started)
    return client, stream_id


# -- connection errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "preface",
    [b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"PRI * HTTP/1.1"],
    ids=["http1", "short"],  # "short": wrong before the full 24 bytes are in
)
async def test_bad_preface_gets_goaway_protocol_error_and_new_connections_still_work(
    native: Native, connect: Connect, preface: bytes
) -> None:
    client = await connect(native.port, raw=True)
    client.write(preface)
    await client.wait_closed()
    assert client.goaway == (0, f.PROTOCOL_ERROR)

    again = await connect(native.port)
    response = await again.call(ECHO, b"still here")
    assert (response.status, response.message) == (0, b"still here")


async def test_frame_over_16384_bytes_gets_goaway_frame_size_error(
    native: Native, connect: Connect
) -> None:
    client = await connect(native.port, raw=True)
    # the frame's header alone is enough: the server must not wait for 16 KiB it never allowed
    client.write(
        f.PREFACE + f.settings({}) + (16385).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    )
    await client.wait_closed()
    assert client.goaway == (0, f.FRAME_SIZE_ERROR)


STATIC_REQUEST = b"\x83\x86\x84"  # HPACK static indices: :method POST, :scheme http, :path /


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (f.frame(f.HEADERS, 0x5, 1, b"\xbf"), f.COMPRESSION_ERROR),  # index 63: table empty
        (f.frame(f.HEADERS, 0x5, 2, STATIC_REQUEST), f.PROTOCOL_ERROR),
        (
            f.frame(f.HEADERS, 0x1, 1, STATIC_REQUEST) + f.frame(f.PING, 0, 0, bytes(8)),
            f.PROTOCOL_ERROR,
        ),
        (f.frame(f.DATA, 0x1, 5, b"x"), f.PROTOCOL_ERROR),
        (f.window_update(0, 0), f.PROTOCOL_ERROR),
        (f.frame(f.PUSH_PROMISE, 0x4, 1, bytes(4)), f.PROTOCOL_ERROR),
    ],
    ids=["bad-hpack", "even-stream", "interrupted-block", "data-on-idle", "window-of-0", "push"],
)
async def test_connection_errors_end_with_goaway(
    native: Native, connect: Connect, frames: bytes, code: int
) -> None:
    client = await connect(native.port, raw=True)
    client.write(f.PREFACE + f.settings({}) + frames)
    await client.wait_closed()
    assert client.goaway == (0, code)


# -- requests that are not calls -------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"content_type": "application/json"}, "415"), ({"method": "GET"}, "405")],
    ids=["content-type", "method"],
)
async def test_non_grpc_request_gets_http_status(
    native: Native, connect: Connect, headers: dict[str, str], status: str
) -> None:
    client = await connect(native.port)
    response = await client.call(ECHO, b"x", **headers)
    assert response.blocks == [{":status": status}]
    assert response.ended
    assert response.data == b""


async def test_unknown_method_is_unimplemented_in_a_trailers_only_response(
    native: Native, connect: Connect
) -> None:
    client = await connect(native.port)
    response = await client.call(f"/{SERVICE}/Nope", b"x")
    [block] = response.blocks
    assert block[":status"] == "200"
    assert block["content-type"] == "application/grpc"
    assert block["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert response.ended
    assert response.data == b""


# -- request bodies ----------------------------------------------------------------------------


async def test_should_rate_limit_over_plain_http2(
    start_server: StartServer, connect: Connect
) -> None:
    app = await start_server(RULES)
    client = await connect(app.grpc_port)
    request = rls_pb2.RateLimitRequest(
        domain="edge",
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="a")]
            )
        ],
    )
    response = await client.call(SHOULD_RATE_LIMIT, request.SerializeToString())
    assert response.status == 0
    decision = rls_pb2.RateLimitResponse.FromString(response.message)
    assert decision.overall_code == rls_pb2.RateLimitResponse.OK
    assert decision.statuses[0].limit_remaining == 4


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (grpc_body(b"\x0a\x04edge", compressed=True), grpc.StatusCode.UNIMPLEMENTED),
        (b"", grpc.StatusCode.INTERNAL),
        (b"\x00\x00\x00", grpc.StatusCode.INTERNAL),
        (b"\x00\x00\x00\x00\x09\x0a\x04edge", grpc.StatusCode.INTERNAL),  # prefix too long
        (b"\x00\x00\x00\x00\x02\x0a\x04edge", grpc.StatusCode.INTERNAL),  # prefix too short
        (grpc_body(b"\x0a\x04edge") * 2, grpc.StatusCode.INTERNAL),
    ],
    ids=["compressed", "empty", "partial-prefix", "long-prefix", "short-prefix", "two-messages"],
)
async def test_request_body_not_exactly_one_plain_message_is_refused(
    start_server: StartServer, connect: Connect, body: bytes, status: grpc.StatusCode
) -> None:
    app = await start_server(RULES)
    client = await connect(app.grpc_port)
    stream_id = client.start(SHOULD_RATE_LIMIT)
    client.send(stream_id, body)
    response = await client.response(stream_id)
    assert response.status == status.value[0]
    assert len(response.blocks) == 1  # trailers-only
    assert response.data == b""


@pytest.mark.parametrize("size", [MAX_MESSAGE + 1, 4 * MAX_MESSAGE])
async def test_request_over_max_message_is_resource_exhausted_and_the_connection_goes_on(
    native: Native, connect: Connect, size: int
) -> None:
    client = await connect(native.port)
    body = grpc_body(pattern(size))
    stream_id = client.start(ECHO)
    for start in range(0, len(body), 1000):
        end = min(start + 1000, len(body))
        client.h2.send_data(stream_id, body[start:end], end_stream=end == len(body))
    client.flush()
    response = await client.response(stream_id)
    await client.wait_for(lambda: response.reset is not None)
    assert response.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert response.reset == f.NO_ERROR

    largest = await client.call(ECHO, pattern(MAX_MESSAGE))
    assert (largest.status, largest.message) == (0, pattern(MAX_MESSAGE))


async def test_padded_data_frames_are_unpadded(native: Native, connect: Connect) -> None:
    client = await connect(native.port)
    body = grpc_body(b"padded message")
    stream_id = client.start(ECHO)
    client.h2.send_data(stream_id, body[:7], pad_length=0)
    client.h2.send_data(stream_id, body[7:], end_stream=True, pad_length=200)
    client.flush()
    assert any(frame.flags & f.PADDED for frame in client.sent)
    response = await client.response(stream_id)
    assert (response.status, response.message) == (0, b"padded message")


async def test_priority_fields_and_frames_are_ignored(native: Native, connect: Connect) -> None:
    client = await connect(native.port)
    stream_id = client.h2.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", ECHO),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
    ]
    client.h2.send_headers(stream_id, headers, priority_weight=200, priority_depends_on=0)
    client.h2.prioritize(stream_id, weight=50)
    client.send(stream_id, grpc_body(b"prioritized"))
    assert {f.HEADERS, f.PRIORITY} <= {frame.kind for frame in client.sent if frame.stream_id}
    response = await client.response(stream_id)
    assert (response.status, response.message) == (0, b"prioritized")


@pytest.mark.parametrize("size", [3, 30_000], ids=["small", "continuation"])
async def test_request_ended_by_client_trailers_is_answered(
    native: Native, connect: Connect, size: int
) -> None:
    """END_STREAM comes on the trailers' HEADERS frame (the first of the block when a large
    trailer splits it over CONTINUATION frames)."""
    client = await connect(native.port)
    stream_id = client.start(ECHO)
    client.send(stream_id, grpc_body(b"with trailers"), end_stream=False)
    client.h2.send_headers(stream_id, [("x-checksum", random_text(size))], end_stream=True)
    client.flush()
    kinds = [frame.kind for frame in client.sent if frame.stream_id == stream_id]
    assert kinds[-1] == (f.CONTINUATION if size > f.DEFAULT_MAX_FRAME else f.HEADERS)
    response = await client.response(stream_id)
    assert (response.status, response.message) == (0, b"with trailers")


# -- headers -----------------------------------------------------------------------------------


async def test_header_block_split_over_continuation_reaches_the_handler_intact(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(max_header_list=64 * 1024))
    client = await connect(native.port)
    value = random_text(30_000)
    response = await client.call(METADATUM, b"x-big", metadata=[("x-big", value)])
    assert f.CONTINUATION in {frame.kind for frame in client.sent}
    assert (response.status, response.message) == (0, value.encode())


@pytest.mark.parametrize("padded", [True, False])
async def test_binary_metadata_reaches_the_handler_decoded(
    native: Native, connect: Connect, padded: bool
) -> None:
    client = await connect(native.port)
    value = bytes(range(256))
    encoded = base64.b64encode(value).decode()
    if not padded:  # gRPC clients leave the padding out
        encoded = encoded.rstrip("=")
    response = await client.call(METADATUM, b"x-raw-bin", metadata=[("x-raw-bin", encoded)])
    assert (response.status, response.message) == (0, value)


async def test_changing_metadata_is_read_afresh_on_each_call_of_a_connection(
    native: Native, connect: Connect
) -> None:
    """After its first call h2 sends a connection's headers as HPACK indices, and the server
    remembers what each such block meant. A header larger than the table empties it (RFC 7541
    §4.4), after which h2 sends the very bytes of an earlier block, now meaning tenant c."""
    client = await connect(native.port)
    pad = [("x-pad", "p" * 5000)]
    calls = [
        ("a", []),
        ("a", []),
        ("b", []),
        ("b", []),
        ("a", []),
        ("c", pad),
        ("c", []),
        ("c", []),
    ]
    seen = []
    for tenant, extra in calls:
        metadata = [("x-tenant", tenant), *extra]
        seen.append((await client.call(METADATUM, b"x-tenant", metadata=metadata)).message)
    assert seen == [tenant.encode() for tenant, _ in calls]
    blocks = [frame.payload for frame in client.sent if frame.kind == f.HEADERS]
    assert blocks[-1] == blocks[1]  # the same bytes as the second call's, another tenant


# -- flow control, limits, pings -----------------------------------------------------------------


@pytest.mark.parametrize("window", [16, 65_535])
async def test_response_follows_the_clients_window_and_frame_size(
    native: Native, connect: Connect, window: int
) -> None:
    """h2 fails the test (FlowControlError) if the server sends past the window; it gives
    window back only as the client reads, so the response arrives in WINDOW_UPDATE steps."""
    client = await connect(
        native.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    response = await client.call(LARGE, b"50000")
    assert response.status == 0
    assert response.message == pattern(50_000)
    assert max(response.data_frames) <= min(window, f.DEFAULT_MAX_FRAME)
    assert sum(response.data_frames) == 50_005
    assert len(response.data_frames) >= 50_005 / min(window, f.DEFAULT_MAX_FRAME)


async def test_window_raised_mid_response_applies_to_the_open_stream(
    native: Native, connect: Connect
) -> None:
    """A new SETTINGS_INITIAL_WINDOW_SIZE changes the windows of open streams too (RFC 9113
    §6.9.2). h2 gives window back only once half of the new one is read, so a server that
    kept the old window would stall here."""
    initial = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
    client = await connect(native.port, settings={initial: 16})
    response = client.on(client.request(LARGE, b"50000"))
    await client.wait_for(lambda: bool(response.data_frames))
    client.h2.update_settings({initial: 1 << 20})
    client.flush()
    await client.wait_for(lambda: response.ended)
    assert response.message == pattern(50_000)
    assert max(response.data_frames) > 16


async def test_ping_is_acknowledged_with_its_payload(native: Native, connect: Connect) -> None:
    client = await connect(native.port)
    await client.ping(b"\x00\x01pong\xfe\xff")
    assert client.ping_acks == [b"\x00\x01pong\xfe\xff"]


async def test_streams_over_the_limit_are_refused_and_the_open_ones_complete(
    native: Native, connect: Connect
) -> None:
    client = await connect(native.port)
    # opened before h2 has read the server's MAX_CONCURRENT_STREAMS, so h2 lets it through
    stream_ids = [client.start(ECHO) for _ in range(DEFAULT_LIMITS.max_concurrent_streams + 1)]
    *open_ids, refused_id = stream_ids
    refused = client.on(refused_id)
    await client.wait_for(lambda: refused.reset is not None)
    assert refused.reset == f.REFUSED_STREAM
    assert all(client.frames_on(stream_id) == [] for stream_id in open_ids)

    for stream_id in open_ids:
        client.h2.send_data(stream_id, grpc_body(str(stream_id).encode()), end_stream=True)
    client.flush()
    await client.wait_for(lambda: all(client.on(stream_id).ended for stream_id in open_ids))
    answers = [(client.on(i).status, client.on(i).message) for i in open_ids]
    assert answers == [(0, str(stream_id).encode()) for stream_id in open_ids]


# -- call lifecycle ----------------------------------------------------------------------------


async def test_client_reset_cancels_the_handler_and_nothing_is_sent_on_that_stream(
    native: Native, connect: Connect
) -> None:
    client, stream_id = await slow_call_started(native, connect)
    client.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    client.flush()
    await event_set(native.service.cancelled)

    response = await client.call(ECHO, b"after the reset")
    assert (response.status, response.message) == (0, b"after the reset")
    await client.ping(b"12345678")
    assert client.frames_on(stream_id) == []


async def test_grpc_timeout_ends_the_call_with_deadline_exceeded(
    native: Native, connect: Connect
) -> None:
    client = await connect(native.port)
    response = await client.call(SLOW, b"", metadata=[("grpc-timeout", "50m")])
    assert response.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert native.service.cancelled.is_set()


async def test_graceful_stop_finishes_calls_in_flight_and_refuses_new_streams(
    native: Native, connect: Connect
) -> None:
    client, slow_id = await slow_call_started(native, connect)
    stopping = asyncio.create_task(native.server.stop(grace=5))
    await asyncio.sleep(0)  # stop() sends the GOAWAYs before its first await
    assert all(connection.draining for connection in native.server.connections)
    # the client has not read the GOAWAY yet: this stream crosses it on the wire
    late_id = client.request(ECHO, b"too late")
    await client.wait_for(lambda: client.on(late_id).reset is not None)
    assert client.goaway == (slow_id, f.NO_ERROR)
    assert client.on(late_id).reset == f.REFUSED_STREAM
    assert not client.on(slow_id).ended

    native.service.release.set()
    response = await client.response(slow_id)
    assert (response.status, response.message) == (0, b"done")
    await client.wait_closed()
    async with asyncio.timeout(TIMEOUT):
        await stopping


async def test_stop_ends_calls_still_running_after_the_grace_with_unavailable(
    native: Native, connect: Connect
) -> None:
    client, stream_id = await slow_call_started(native, connect)
    await native.server.stop(grace=0.1)
    await client.wait_closed()
    assert client.goaway == (stream_id, f.NO_ERROR)
    assert client.on(stream_id).status == grpc.StatusCode.UNAVAILABLE.value[0]
    assert client.on(stream_id).ended
    assert native.service.cancelled.is_set()


async def test_health_watch_streams_messages_without_ending_the_call(
    start_server: StartServer, connect: Connect
) -> None:
    app = await start_server(RULES)
    client = await connect(app.grpc_port)
    request = health_pb2.HealthCheckRequest(service="")
    watch = client.on(client.request(HEALTH_WATCH, request.SerializeToString()))
    await client.wait_for(lambda: len(watch.messages) == 1)
    await client.ping(b"first...")  # whatever the server sent before its PING ACK is here
    assert not watch.ended

    await app.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await client.wait_for(lambda: len(watch.messages) == 2)
    await client.ping(b"second..")
    assert not watch.ended
    statuses = [health_pb2.HealthCheckResponse.FromString(m).status for m in watch.messages]
    assert statuses == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]


async def test_a_streaming_handler_too_far_behind_is_refused(
    native: Native, connect: Connect
) -> None:
    client = await connect(native.port)
    stream_id = client.start(f"/{SERVICE}/Stalled")
    for _ in range(MAX_QUEUED_MESSAGES + 1):
        client.send(stream_id, grpc_body(b"m"), end_stream=False)
    response = await client.response(stream_id)
    assert response.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "behind" in response.blocks[-1]["grpc-message"]
    assert (await client.call(ECHO, b"still here")).message == b"still here"


async def test_a_request_that_does_not_parse_is_invalid_argument(
    start_server: StartServer, connect: Connect
) -> None:
    """A typed method's deserializer fails: the caller's error, answered without a traceback."""
    app = await start_server(RULES)
    client = await connect(app.grpc_port)
    response = await client.call("/grpc.health.v1.Health/Check", b"\xff\xff\xff")
    assert response.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.blocks[-1]["grpc-message"].startswith("malformed request")


# -- conformance: what h2spec checks (docs/reliability.md) ----------------------------------


def request_block(
    encoder: hpack.Encoder, path: str = ECHO, extra: list[tuple[str, str]] | None = None
) -> bytes:
    """A gRPC request's header block, by the given encoder (which keeps its table)."""
    return encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(extra or []),
        ]
    )


def headers_frame(stream_id: int, block: bytes, end_stream: bool = False) -> bytes:
    return f.frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if end_stream else 0), stream_id, block)


def data_frame(stream_id: int, data: bytes, end_stream: bool = True) -> bytes:
    return f.frame(f.DATA, f.END_STREAM if end_stream else 0, stream_id, data)


async def raw_client(native: Native, connect: Connect) -> Client:
    """A client writing its own frames, past the preface and an empty SETTINGS."""
    client = await connect(native.port, raw=True)
    client.write(f.PREFACE + f.settings({}))
    return client


async def still_answers(native: Native, connect: Connect) -> None:
    again = await connect(native.port)
    response = await again.call(ECHO, b"still here")
    assert (response.status, response.message) == (0, b"still here")


@pytest.mark.parametrize(
    "frames",
    [
        f.rst_stream(1, f.CANCEL),
        f.window_update(1, 1),
        f.settings({f.ENABLE_PUSH: 2}),
        headers_frame(5, STATIC_REQUEST + b"\x84", end_stream=True)
        + headers_frame(3, STATIC_REQUEST, end_stream=True),
    ],
    ids=["rst-on-idle", "window-update-on-idle", "enable-push-2", "lower-stream-id"],
)
async def test_more_connection_errors_end_with_goaway_protocol_error(
    native: Native, connect: Connect, frames: bytes
) -> None:
    client = await raw_client(native, connect)
    client.write(frames)
    await client.wait_closed()
    assert client.goaway is not None and client.goaway[1] == f.PROTOCOL_ERROR


async def test_the_first_frame_must_be_settings(native: Native, connect: Connect) -> None:
    client = await connect(native.port, raw=True)
    client.write(f.PREFACE + f.frame(f.PING, 0, 0, bytes(8)))
    await client.wait_closed()
    assert client.goaway == (0, f.PROTOCOL_ERROR)


@pytest.mark.parametrize("kind", [f.DATA, f.HEADERS])
async def test_frames_on_a_stream_the_client_ended_and_was_answered_are_stream_closed(
    native: Native, connect: Connect, kind: int
) -> None:
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    client.write(headers_frame(1, request_block(encoder)) + data_frame(1, grpc_body(b"x")))
    await client.wait_for(lambda: client.on(1).ended)
    late = data_frame(1, b"late") if kind == f.DATA else headers_frame(1, request_block(encoder))
    client.write(late)
    await client.wait_closed()
    assert client.goaway == (1, f.STREAM_CLOSED)


async def test_frames_on_a_stream_the_client_reset_are_stream_closed(
    native: Native, connect: Connect
) -> None:
    client = await raw_client(native, connect)
    client.write(headers_frame(1, request_block(hpack.Encoder())) + f.rst_stream(1, f.CANCEL))
    client.write(data_frame(1, b"late"))
    await client.wait_closed()
    assert client.goaway == (1, f.STREAM_CLOSED)


async def test_data_after_end_stream_on_a_call_in_progress_resets_only_that_stream(
    native: Native, connect: Connect
) -> None:
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    client.write(headers_frame(1, request_block(encoder, SLOW)) + data_frame(1, grpc_body(b"")))
    await event_set(native.service.started)
    client.write(data_frame(1, b"more"))
    await client.wait_for(lambda: client.on(1).reset is not None)
    assert client.on(1).reset == f.STREAM_CLOSED
    await event_set(native.service.cancelled)
    client.write(headers_frame(3, request_block(encoder)) + data_frame(3, grpc_body(b"on")))
    response = await client.response(3)
    assert (response.status, response.message) == (0, b"on")


@pytest.mark.parametrize(
    "fields",
    [
        [(":method", "POST"), (":scheme", "http"), (":path", ECHO), ("X-Upper", "1")],
        [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":unknown", "1")],
        [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":status", "200")],
        [(":method", "POST"), (":scheme", "http"), ("te", "trailers"), (":path", ECHO)],
        [(":method", "POST"), (":scheme", "http"), (":path", ECHO), ("connection", "close")],
        [(":method", "POST"), (":scheme", "http"), (":path", ECHO), ("te", "gzip")],
        [(":method", "POST"), (":scheme", "http"), (":path", "")],
        [(":scheme", "http"), (":path", ECHO)],
        [(":method", "POST"), (":path", ECHO)],
        [(":method", "POST"), (":scheme", "http")],
        [(":method", "POST"), (":method", "POST"), (":scheme", "http"), (":path", ECHO)],
        [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":path", ECHO)],
    ],
    ids=[
        "uppercase",
        "unknown-pseudo",
        "response-pseudo",
        "pseudo-after-regular",
        "connection-specific",
        "te-not-trailers",
        "empty-path",
        "no-method",
        "no-scheme",
        "no-path",
        "two-methods",
        "two-paths",
    ],
)
async def test_a_malformed_request_resets_its_stream_and_the_connection_goes_on(
    native: Native, connect: Connect, fields: list[tuple[str, str]]
) -> None:
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    client.write(headers_frame(1, encoder.encode(fields), end_stream=True))
    client.write(headers_frame(3, request_block(encoder)) + data_frame(3, grpc_body(b"next")))
    response = await client.response(3)
    assert (response.status, response.message) == (0, b"next")
    assert client.on(1).reset == f.PROTOCOL_ERROR
    assert client.on(1).blocks == []


@pytest.mark.parametrize("declared", [3, 100])
async def test_a_content_length_unlike_the_body_resets_the_stream(
    native: Native, connect: Connect, declared: int
) -> None:
    client = await raw_client(native, connect)
    block = request_block(hpack.Encoder(), extra=[("content-length", str(declared))])
    client.write(headers_frame(1, block) + data_frame(1, grpc_body(b"twelve bytes")))
    await client.wait_for(lambda: client.on(1).reset is not None)
    assert client.on(1).reset == f.PROTOCOL_ERROR


async def test_a_content_length_like_the_body_is_answered(native: Native, connect: Connect) -> None:
    client = await raw_client(native, connect)
    body = grpc_body(b"twelve bytes")
    block = request_block(hpack.Encoder(), extra=[("content-length", str(len(body)))])
    client.write(headers_frame(1, block) + data_frame(1, body[:5], False) + data_frame(1, body[5:]))
    response = await client.response(1)
    assert (response.status, response.message) == (0, b"twelve bytes")


async def test_a_stream_depending_on_itself_is_reset(native: Native, connect: Connect) -> None:
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    priority = (1).to_bytes(4, "big") + b"\x10"  # depends on stream 1, weight 17
    flags = f.END_HEADERS | f.END_STREAM | f.PRIORITY_FLAG
    client.write(f.frame(f.HEADERS, flags, 1, priority + request_block(encoder)))
    client.write(f.frame(f.PRIORITY, 0, 3, (3).to_bytes(4, "big") + b"\x10"))
    await client.wait_for(lambda: client.on(3).reset is not None)
    assert (client.on(1).reset, client.on(3).reset) == (f.PROTOCOL_ERROR, f.PROTOCOL_ERROR)
    await still_answers(native, connect)


async def test_a_stream_window_over_2_31_resets_only_that_stream(
    native: Native, connect: Connect
) -> None:
    client, stream_id = await slow_call_started(native, connect)
    client.write(f.window_update(stream_id, f.MAX_WINDOW) * 2)
    await client.wait_for(lambda: client.on(stream_id).reset is not None)
    assert client.on(stream_id).reset == f.FLOW_CONTROL_ERROR
    await event_set(native.service.cancelled)
    response = await client.call(ECHO, b"on the same connection")
    assert response.status == 0


# -- limits (transport/h2/limits.py) --------------------------------------------------------------


def limited(name: str) -> float:
    from ratelimitd import metrics

    value = metrics.REGISTRY.get_sample_value("ratelimitd_h2_limited_total", {"limit": name})
    return value or 0.0


async def calmed(client: Client) -> None:
    await client.wait_closed()
    assert client.goaway is not None and client.goaway[1] == f.ENHANCE_YOUR_CALM


async def test_a_header_list_over_the_limit_fails_that_call_only(
    native: Native, connect: Connect
) -> None:
    client = await connect(native.port)
    before = limited("header_list")
    big = await client.call(METADATUM, b"x-big", metadata=[("x-big", "v" * 20_000)])
    assert big.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "header list" in big.blocks[-1]["grpc-message"]
    small = await client.call(ECHO, b"the connection goes on")
    assert (small.status, small.message) == (0, b"the connection goes on")
    assert limited("header_list") == before + 1


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(resets_burst=20, resets_per_s=1))
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    before = limited("resets")
    client.write(
        b"".join(
            headers_frame(sid, request_block(encoder)) + f.rst_stream(sid, f.CANCEL)
            for sid in range(1, 200, 2)
        )
    )
    await calmed(client)
    assert limited("resets") == before + 1
    await still_answers(native, connect)


@pytest.mark.parametrize(
    "flood",
    [
        headers_frame(1, request_block(hpack.Encoder())) + data_frame(1, b"", False) * 50,
        f.frame(f.HEADERS, 0, 1, b"") + f.frame(f.CONTINUATION, 0, 1, b"") * 50,
        f.frame(f.PING, 0, 0, bytes(8)) * 50,
        f.settings({}) * 50,
    ],
    ids=["empty-data", "empty-continuation", "ping", "settings"],
)
async def test_a_frame_flood_ends_the_connection_with_enhance_your_calm(
    native_with: StartNative, connect: Connect, flood: bytes
) -> None:
    quick = {"burst": 10, "per_s": 1.0}
    native = await native_with(
        Limits(
            empty_frames_burst=quick["burst"],
            empty_frames_per_s=quick["per_s"],
            pings_burst=quick["burst"],
            pings_per_s=quick["per_s"],
            settings_burst=quick["burst"],
            settings_per_s=quick["per_s"],
            max_continuations=100,
        )
    )
    client = await raw_client(native, connect)
    client.write(flood)
    await calmed(client)
    await still_answers(native, connect)


@pytest.mark.parametrize(
    ("continuation", "count"),
    [(b"\x00" * 0, 17), (bytes(16_384), 5)],
    ids=["many-frames", "large-block"],
)
async def test_a_header_block_too_long_ends_the_connection(
    native: Native, connect: Connect, continuation: bytes, count: int
) -> None:
    client = await raw_client(native, connect)
    frames = [f.frame(f.CONTINUATION, 0, 1, continuation) for _ in range(count)]
    client.write(f.frame(f.HEADERS, 0, 1, STATIC_REQUEST) + b"".join(frames))
    await calmed(client)


async def test_an_hpack_bomb_ends_the_connection(native: Native, connect: Connect) -> None:
    """One 4 KiB field in the table, then referred to 100 times: 400 KiB decoded from a few
    hundred bytes. Decoding stops at the hard limit; the connection ends."""
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    first = request_block(encoder, extra=[("x-bomb", "b" * 4000)])
    index = b"\xbe"  # dynamic table entry 62: the field just added
    client.write(
        headers_frame(1, first, end_stream=True) + headers_frame(3, first[:0] + index * 100)
    )
    await calmed(client)


async def test_connections_over_the_limit_get_goaway(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(max_connections=2))
    first, second = await connect(native.port), await connect(native.port)
    await first.ping(b"first...")
    await second.ping(b"second..")
    third = await connect(native.port)
    await calmed(third)
    await first.close()
    await third.close()
    await until(lambda: len(native.server.connections) < 2)
    await still_answers(native, connect)


async def test_a_connection_without_a_handshake_is_closed(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(handshake_timeout_s=0.2))
    client = await connect(native.port, raw=True)
    client.write(f.PREFACE[:10])
    await client.wait_closed()


@pytest.mark.parametrize("unfinished", ["frame", "header block"])
async def test_a_frame_or_header_block_not_finished_in_time_closes_the_connection(
    native_with: StartNative, connect: Connect, unfinished: str
) -> None:
    """Slowloris after the handshake: a frame sent a byte at a time, or a HEADERS frame whose
    CONTINUATION never comes, must not hold a connection slot for the idle timeout."""
    native = await native_with(Limits(partial_frame_timeout_s=0.2))
    client = await raw_client(native, connect)
    block = request_block(hpack.Encoder(), ECHO)
    if unfinished == "frame":
        client.write(headers_frame(1, block)[:-1])
    else:
        client.write(f.frame(f.HEADERS, 0, 1, block))
    await client.wait_closed()
    assert client.goaway == (0, f.NO_ERROR)


async def test_an_idle_connection_gets_goaway_and_is_closed(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(idle_timeout_s=0.2))
    client = await connect(native.port)
    assert (await client.call(ECHO, b"x")).status == 0
    await client.wait_closed()
    assert client.goaway == (1, f.NO_ERROR)


async def test_a_request_body_that_never_ends_is_deadline_exceeded(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(request_body_timeout_s=0.2))
    client = await connect(native.port)
    stream_id = client.start(ECHO)
    client.send(stream_id, b"\x00\x00\x00", end_stream=False)
    response = await client.response(stream_id)
    assert response.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    await client.wait_for(lambda: client.on(stream_id).reset is not None)
    assert client.on(stream_id).reset == f.NO_ERROR


async def test_request_bytes_are_credited_back_only_as_the_call_takes_them(
    native_with: StartNative, connect: Connect
) -> None:
    """A streaming handler that reads nothing holds what was sent: no connection credit comes
    back for it until it reads."""
    native = await native_with(Limits(connection_buffer=f.DEFAULT_WINDOW))
    client = await connect(native.port)
    stream_id = client.start(f"/{SERVICE}/Stalled")
    for _ in range(40):
        client.send(stream_id, grpc_body(bytes(1000)), end_stream=False)
    await client.ping(b"settled.")

    def credited() -> int:
        updates = [fr for fr in client.frames if fr.kind == f.WINDOW_UPDATE and not fr.stream_id]
        return sum(int.from_bytes(fr.payload, "big") for fr in updates)

    assert credited() == 0
    native.service.release.set()
    await client.wait_for(lambda: len(client.on(stream_id).messages) == 40)
    await client.wait_for(lambda: credited() >= 36 * 1005)


async def test_frames_past_the_work_per_read_are_read_on_the_next_turn(
    native_with: StartNative, connect: Connect
) -> None:
    native = await native_with(Limits(frames_per_read=3))
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    client.write(
        b"".join(
            headers_frame(sid, request_block(encoder)) + data_frame(sid, grpc_body(b"%d" % sid))
            for sid in range(1, 80, 2)
        )
    )
    for sid in range(1, 80, 2):
        response = await client.response(sid)
        assert (response.status, response.message) == (0, b"%d" % sid)


async def test_the_goaway_arrives_although_the_client_goes_on_sending(
    native: Native, connect: Connect
) -> None:
    client = await raw_client(native, connect)
    client.write(
        f.frame(f.PUSH_PROMISE, 0x4, 1, bytes(4)) + f.frame(f.PING, 0, 0, bytes(8)) * 20_000
    )
    await client.wait_closed()
    assert client.goaway == (0, f.PROTOCOL_ERROR)


async def test_cancelled_calls_leave_no_garbage_cycles(
    native_with: StartNative, connect: Connect
) -> None:
    """With the collector off (the service collects old objects rarely: app.tune_gc), calls
    reset by their client must be freed by reference counting alone: no garbage cycles, and
    as many objects alive and as much memory taken after the resets as before them."""
    resets = 100_000
    native = await native_with(Limits(resets_burst=10**9, pings_burst=10**9))
    client = await raw_client(native, connect)
    encoder = hpack.Encoder()
    block = request_block(encoder, ECHO)
    client.write(headers_frame(1, block) + data_frame(1, grpc_body(b"warm")))
    await client.response(1)
    gc.collect()
    gc.disable()
    try:
        objects_before, rss_before = len(gc.get_objects()), rss_bytes(os.getpid())
        stream_ids = iter(range(3, 2 * resets + 3, 2))
        for _ in range(resets // 100):
            batch = [next(stream_ids) for _ in range(100)]
            client.write(
                b"".join(
                    headers_frame(sid, request_block(encoder, SLOW))
                    + data_frame(sid, grpc_body(b""))
                    + f.rst_stream(sid, f.CANCEL)
                    for sid in batch
                )
            )
            payload = b"%08d" % batch[0]
            client.write(f.frame(f.PING, 0, 0, payload))
            await client.wait_for(lambda: payload in client.ping_acks)  # noqa: B023
        await asyncio.sleep(0.05)
        client.ping_acks.clear()
        objects_after, rss_after = len(gc.get_objects()), rss_bytes(os.getpid())
        garbage = gc.collect()
    finally:
        gc.enable()
    assert objects_after - objects_before < 2_000, (objects_before, objects_after)
    assert rss_after - rss_before < 16 << 20, (rss_before, rss_after)  # 100 MiB+ before the fix
    assert garbage < 200, f"{garbage} objects in cycles after {resets:,} cancelled calls"
