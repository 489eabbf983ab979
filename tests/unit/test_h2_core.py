"""The HTTP/2 core without I/O: driven by bytes from python-hyper's `h2` client, no event loop,
no socket. What it tells its layer above (`Events`) and what it writes back are checked."""

from __future__ import annotations

import itertools

import h2.config
import h2.connection
import h2.events
import pytest

from ratelimitd.transport.h2 import frames as f
from ratelimitd.transport.h2.core import ServerCore
from ratelimitd.transport.h2.headers import Headers, RequestHead
from ratelimitd.transport.h2.limits import Limits
from ratelimitd.transport.h2.stream import TRANSITIONS, Stream, StreamEvent, StreamState

PATH = "/test.Service/Method"
STREAMING_PATH = "/test.Service/Upload"  # a request whose bytes go up as they come
REFUSED_PATH = "/test.Service/Gone"  # a head that carries its own answer
REFUSAL = b"\x88"  # a header block: `:status: 200` (HPACK static index 8)
REQUEST_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", PATH),
    (":authority", "core"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


class RecordedEvents:
    """The layer above, as a list of what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.bodies: dict[int, bytes] = {}
        self.closing: list[bool] = []
        self.streams: dict[int, Stream] = {}

    def new_stream(
        self, stream_id: int, head: RequestHead, window: int, content_length: int | None
    ) -> Stream:
        stream = Stream(stream_id, head, window, content_length)
        self.streams[stream_id] = stream
        return stream

    def parse_head(self, headers: Headers) -> RequestHead:
        path = dict(headers)[b":path"].decode()
        refusal = REFUSAL if path == REFUSED_PATH else None
        return RequestHead(path, None, None, (), refusal, streaming=path == STREAMING_PATH)

    def output_ready(self) -> None:
        pass

    def streaming_request_opened(self, stream: Stream) -> None:
        self.seen.append(("opened", stream.id))

    def request_data(self, stream: Stream) -> None:
        self.seen.append(("data", stream.id))

    def request_ended(self, stream: Stream, body: bytes | None) -> None:
        self.seen.append(("ended", stream.id))
        if body is not None:
            self.bodies[stream.id] = body

    def request_too_large(self, stream: Stream) -> None:
        self.seen.append(("too large", stream.id))

    def request_timed_out(self, stream: Stream) -> None:
        self.seen.append(("timed out", stream.id))

    def stream_cancelled(self, stream: Stream) -> None:
        self.seen.append(("cancelled", stream.id))

    def stream_writable(self, stream: Stream) -> None:
        pass

    def stream_closed(self, stream: Stream) -> None:
        self.seen.append(("closed", stream.id))

    def streams_changed(self, busy: bool) -> None:
        pass

    def close_requested(self, after_error: bool) -> None:
        self.closing.append(after_error)

    def header_list_refusal(self, message: str) -> bytes:
        raise AssertionError("not asked in these tests")


class Pair:
    """An `h2` client and a `ServerCore`, passing bytes by hand."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.events = RecordedEvents()
        self.core: ServerCore[Stream] = ServerCore(self.events, 1 << 20, limits or Limits())
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.core.start()
        self.client.initiate_connection()
        self.to_server()
        self.to_client()

    def to_server(self) -> None:
        self.core.receive(self.client.data_to_send())

    def to_client(self) -> list[h2.events.Event]:
        return list(self.client.receive_data(self.core.data_to_send()))


@pytest.mark.parametrize("answer", [b"ok", bytes(range(256)) * 2, b"x" * 16_000])
def test_a_request_becomes_events_and_an_answer_becomes_frames(answer: bytes) -> None:
    """Answers of one-byte, two-byte and near-frame-size lengths, as h2 reads them back."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST_HEADERS)
    pair.client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    pair.to_server()
    assert pair.events.seen == [("ended", 1)]
    assert pair.events.bodies[1] == b"\x00\x00\x00\x00\x02hi"
    stream = pair.events.streams[1]
    assert stream.state is StreamState.HALF_CLOSED_REMOTE
    pair.core.answer(stream, answer)
    assert stream.state is StreamState.CLOSED
    received = pair.to_client()
    kinds = [type(event) for event in received]
    assert h2.events.ResponseReceived in kinds and h2.events.StreamEnded in kinds
    data = b"".join(e.data for e in received if isinstance(e, h2.events.DataReceived))
    assert data == b"\x00" + len(answer).to_bytes(4, "big") + answer
    (trailers,) = [e for e in received if isinstance(e, h2.events.TrailersReceived)]
    assert (b"grpc-status", b"0") in trailers.headers


def headers_for(path: str) -> list[tuple[str, str]]:
    return [(name, path if name == ":path" else value) for name, value in REQUEST_HEADERS]


def connection_window(pair: Pair) -> int:
    """What the client may still send on the connection, as the core's WINDOW_UPDATEs say."""
    return pair.client.outbound_flow_control_window


@pytest.mark.parametrize("padded", [False, True])
def test_a_body_over_several_frames_goes_up_whole_and_is_credited_back(padded: bool) -> None:
    """The usual unary call comes in one DATA frame; one in pieces must end the same way,
    and every byte it took of the connection window (padding too) is given back, but for
    less than one refill's worth still to come."""
    buffer = f.DEFAULT_WINDOW  # a refill every 1/16 of it
    pair = Pair(Limits(connection_buffer=buffer))
    pair.client.send_headers(1, REQUEST_HEADERS)
    body = b"\x00" + (20_000).to_bytes(4, "big") + bytes(20_000)
    pad = 7 if padded else None
    pieces = [body[:9_000], body[9_000:18_000], body[18_000:]]
    for n, piece in enumerate(pieces):
        pair.client.send_data(1, piece, end_stream=n == len(pieces) - 1, pad_length=pad)
    sent = len(body) + (8 * len(pieces) if padded else 0)  # a pad-length byte and 7 of padding
    window = connection_window(pair)
    pair.to_server()
    assert pair.events.seen == [("ended", 1)]
    assert pair.events.bodies[1] == body
    pair.to_client()
    given_back = connection_window(pair) - window
    assert sent - buffer // 16 < given_back <= sent


def test_a_streaming_request_goes_up_as_it_comes_and_ends_with_no_body() -> None:
    pair = Pair()
    pair.client.send_headers(1, headers_for(STREAMING_PATH))
    pair.client.send_data(1, b"\x00\x00\x00\x00\x01a")
    pair.client.send_data(1, b"\x00\x00\x00\x00\x01b", end_stream=True)
    pair.to_server()
    assert pair.events.seen == [("opened", 1), ("data", 1), ("data", 1), ("ended", 1)]
    assert 1 not in pair.events.bodies
    assert bytes(pair.events.streams[1].body) == b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x01b"


def test_a_head_that_carries_a_refusal_is_answered_by_the_core() -> None:
    pair = Pair()
    pair.client.send_headers(1, headers_for(REFUSED_PATH))
    pair.client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    pair.to_server()
    assert pair.events.seen == [("closed", 1)]  # never started, never ended
    received = pair.to_client()
    (response,) = [e for e in received if isinstance(e, h2.events.ResponseReceived)]
    assert (b":status", b"200") in response.headers
    assert any(isinstance(e, h2.events.StreamEnded) for e in received)
    assert not pair.core.streams


def test_an_answer_before_the_request_ends_tells_the_client_to_stop() -> None:
    """RFC 9113 §8.1: a response complete before the request is, then RST_STREAM NO_ERROR."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST_HEADERS)
    pair.to_server()
    stream = pair.events.streams[1]
    assert stream.state is StreamState.OPEN
    pair.core.finish(stream, b"")
    assert stream.state is StreamState.CLOSED
    resets = [e for e in pair.to_client() if isinstance(e, h2.events.StreamReset)]
    assert [reset.error_code for reset in resets] == [f.NO_ERROR]


def test_a_client_reset_cancels_the_stream() -> None:
    pair = Pair()
    pair.client.send_headers(1, REQUEST_HEADERS)
    pair.client.reset_stream(1)
    pair.to_server()
    assert pair.events.seen == [("cancelled", 1), ("closed", 1)]
    assert pair.events.streams[1].state is StreamState.CLOSED
    assert not pair.core.streams


def test_a_flood_ends_the_connection_with_goaway() -> None:
    pair = Pair(Limits(pings_burst=3))
    for n in range(5):
        pair.client.ping(b"%08d" % n)
    pair.to_server()
    assert pair.core.failed and pair.events.closing == [True]
    (goaway,) = [e for e in pair.to_client() if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == f.ENHANCE_YOUR_CALM


def test_the_request_body_timeout_is_read_from_the_clock_it_is_given() -> None:
    pair = Pair(Limits(request_body_timeout_s=30))
    pair.client.send_headers(1, REQUEST_HEADERS)
    pair.to_server()
    opened = pair.events.streams[1].opened
    pair.core.tick(opened + 29)
    assert ("timed out", 1) not in pair.events.seen
    pair.core.tick(opened + 31)
    assert ("timed out", 1) in pair.events.seen


def test_the_transition_table_is_rfc_9113_section_5_1() -> None:
    expected = {
        (StreamState.IDLE, StreamEvent.RECV_HEADERS): StreamState.OPEN,
        (StreamState.OPEN, StreamEvent.RECV_END_STREAM): StreamState.HALF_CLOSED_REMOTE,
        (StreamState.OPEN, StreamEvent.SEND_END_STREAM): StreamState.HALF_CLOSED_LOCAL,
        (StreamState.HALF_CLOSED_REMOTE, StreamEvent.SEND_END_STREAM): StreamState.CLOSED,
        (StreamState.HALF_CLOSED_LOCAL, StreamEvent.RECV_END_STREAM): StreamState.CLOSED,
    }
    for transition, state in expected.items():
        assert TRANSITIONS[transition] is state
    for state in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE, StreamState.HALF_CLOSED_LOCAL):
        for reset in (StreamEvent.RECV_RST_STREAM, StreamEvent.SEND_RST_STREAM):
            assert TRANSITIONS[(state, reset)] is StreamState.CLOSED
    assert not [pair for pair in TRANSITIONS if pair[0] is StreamState.CLOSED]


@pytest.mark.parametrize(
    ("state", "event"),
    [pair for pair in itertools.product(StreamState, StreamEvent) if pair not in TRANSITIONS],
)
def test_a_transition_the_rfc_does_not_allow_is_refused(
    state: StreamState, event: StreamEvent
) -> None:
    stream = Stream(1, RequestHead(PATH, None, None, (), None), 65_535, None)
    stream.state = state
    with pytest.raises(KeyError):
        stream.advance(event)
