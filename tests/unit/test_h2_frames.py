"""The HTTP/2 frame reader and writers of ratelimitd's server, checked against hyperframe.

The server reads frames with a few lines of its own (`frames.next_frame`, `frames.unpad`) instead
of hyperframe's parser, for speed: they make no object per frame. These hypothesis tests check
that they read what the reference library (python-hyper's hyperframe) reads: frames hyperframe
writes, the same cut short, and random bytes; and that hyperframe reads what the server's writers
(`frames.settings`, `frames.goaway`, ...) write.

Where hyperframe 6.1 and RFC 9113 disagree (the padding of HEADERS, see `reference`), the RFC
decides.
"""

from __future__ import annotations

import struct

import pytest
from hyperframe.exceptions import HyperframeError, InvalidFrameError, InvalidPaddingError
from hyperframe.frame import (
    FRAMES,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ratelimitd.transport.h2 import frames as f

MAX = f.DEFAULT_MAX_FRAME
MAX_STREAM = 2**31 - 1
RESERVED_BIT = 0x80000000
UNKNOWN_TYPES = [kind for kind in range(256) if kind not in FRAMES]

# (type, flags, stream id, payload): one frame as read
Read = tuple[int, int, int, bytes]


# -- reading with hyperframe ---------------------------------------------------------------------


def flag_bits(frame: Frame) -> int:
    """The flags hyperframe read, as the bits on the wire."""
    if isinstance(frame, ExtensionFrame):
        return frame.flag_byte
    return sum(bit for name, bit in frame.defined_flags if name in frame.flags)


def known_flags(kind: int) -> int:
    """The flag bits hyperframe keeps for a frame type (it drops the others; all 8 if unknown)."""
    if kind not in FRAMES:
        return 0xFF
    return sum(bit for _, bit in FRAMES[kind].defined_flags)


def reference(buffer: bytes, position: int) -> tuple[Frame, bytes]:
    """hyperframe's reading of the whole frame at `position`, and its payload."""
    frame, length = Frame.parse_frame_header(memoryview(buffer[position : position + 9]))
    payload = buffer[position + 9 : position + 9 + length]
    try:
        frame.parse_body(memoryview(payload))
    except InvalidPaddingError:
        # hyperframe 6.1 compares a HEADERS frame's pad length with the payload less its
        # Pad Length byte, so it rejects padding that fills all the rest of the payload. RFC 9113
        # §6.2 allows it ("padding that exceeds the size remaining for the header block fragment"
        # is the error): the fragment is then empty. The RFC decides; DATA is right in hyperframe.
        if not (
            isinstance(frame, HeadersFrame)
            and "PRIORITY" not in frame.flags
            and payload[0] == len(payload) - 1
        ):
            raise
        frame.data = b""
    return frame, payload


def reference_frames(buffer: bytes) -> list[tuple[Frame, bytes]]:
    """Every frame of a buffer of whole frames, read by hyperframe."""
    found: list[tuple[Frame, bytes]] = []
    position = 0
    while position < len(buffer):
        frame, payload = reference(buffer, position)
        found.append((frame, payload))
        position += 9 + len(payload)
    return found


def as_read(frame: Frame, payload: bytes) -> Read:
    assert frame.type is not None
    return frame.type, flag_bits(frame), frame.stream_id, payload


def header_fields(header: bytes) -> tuple[int, int, int, int]:
    """(type, flags, stream id, length) of a 9-byte header, decoded by hand (RFC 9113 §4.1)."""
    return (
        header[3],
        header[4],
        int.from_bytes(header[5:9]) & MAX_STREAM,
        int.from_bytes(header[:3]),
    )


# -- reading with ratelimitd ---------------------------------------------------------------------


def read_all(buffer: bytes) -> tuple[list[Read], int]:
    """The frames `next_frame` reads from position 0 until it says None, and where it stopped."""
    found: list[Read] = []
    position = 0
    while (frame := f.next_frame(buffer, position)) is not None:
        kind, flags, stream_id, start, stop = frame
        assert start == position + 9
        found.append((kind, flags, stream_id, buffer[start:stop]))
        position = stop
    return found, position


def header_block(flags: int, payload: bytes) -> tuple[bytes, bytes]:
    """A HEADERS payload as (priority fields, header block fragment), padding removed."""
    block = f.unpad(flags, payload)
    if flags & f.PRIORITY_FLAG:
        return block[:5], block[5:]
    return b"", block


# -- frames written by hyperframe ----------------------------------------------------------------


def blob(max_size: int) -> st.SearchStrategy[bytes]:
    """Up to `max_size` bytes: a few random ones, or any size up to the largest made of a repeated
    random pattern (cheap to draw at 16 KiB)."""
    repeated = st.builds(
        lambda size, pattern: (pattern * (size // len(pattern) + 1))[:size],
        st.integers(0, max_size) | st.just(max_size),
        st.binary(min_size=1, max_size=16),
    )
    return st.binary(max_size=min(max_size, 64)) | repeated


streams = st.integers(1, MAX_STREAM)
codes = st.integers(0, 2**32 - 1)


def flag_names(*names: str) -> st.SearchStrategy[set[str]]:
    return st.sets(st.sampled_from(names))


@st.composite
def data_frames(draw: st.DrawFn) -> DataFrame:
    flags = draw(flag_names("END_STREAM", "PADDED"))
    pad = draw(st.integers(0, 255)) if "PADDED" in flags else 0
    room = MAX - (1 + pad if "PADDED" in flags else 0)
    return DataFrame(draw(streams), data=draw(blob(room)), pad_length=pad, flags=flags)


@st.composite
def headers_frames(draw: st.DrawFn) -> HeadersFrame:
    flags = draw(flag_names("END_STREAM", "END_HEADERS", "PADDED", "PRIORITY"))
    pad = draw(st.integers(0, 255)) if "PADDED" in flags else 0
    room = MAX - (1 + pad if "PADDED" in flags else 0) - (5 if "PRIORITY" in flags else 0)
    return HeadersFrame(
        draw(streams),
        data=draw(blob(room)),
        pad_length=pad,
        depends_on=draw(st.integers(0, MAX_STREAM)),
        stream_weight=draw(st.integers(0, 255)),
        exclusive=draw(st.booleans()),
        flags=flags,
    )


priority_frames = st.builds(
    PriorityFrame,
    streams,
    depends_on=st.integers(0, MAX_STREAM),
    stream_weight=st.integers(0, 255),
    exclusive=st.booleans(),
)
settings_frames = st.builds(
    SettingsFrame, settings=st.dictionaries(st.integers(0, 255), codes, max_size=40)
) | st.just(SettingsFrame(flags=["ACK"]))
hyperframe_frames: st.SearchStrategy[Frame] = st.one_of(
    data_frames(),
    headers_frames(),
    priority_frames,
    st.builds(RstStreamFrame, streams, error_code=codes),
    settings_frames,
    st.builds(PingFrame, opaque_data=st.binary(min_size=8, max_size=8), flags=flag_names("ACK")),
    st.builds(
        GoAwayFrame,
        last_stream_id=st.integers(0, MAX_STREAM),
        error_code=codes,
        additional_data=blob(MAX - 8),
    ),
    st.builds(WindowUpdateFrame, st.integers(0, MAX_STREAM), window_increment=streams),
    st.builds(ContinuationFrame, streams, data=blob(MAX), flags=flag_names("END_HEADERS")),
)


def raw_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """A 9-byte frame header written without ratelimitd's writers (RFC 9113 §4.1)."""
    return struct.pack(">I", length)[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id)


def by_hand(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame written without ratelimitd's writers."""
    return raw_header(len(payload), kind, flags, stream_id) + payload


unknown_frames = st.builds(
    by_hand,
    st.sampled_from(UNKNOWN_TYPES),
    st.integers(0, 255),
    st.integers(0, MAX_STREAM),
    blob(MAX),
)


def set_reserved_bit(wire: bytes, reserved: bool) -> bytes:
    """The frame with the reserved bit of its stream id set, which a reader must ignore."""
    return wire[:5] + bytes([wire[5] | 0x80 * reserved]) + wire[6:]


wire_frames = st.builds(
    set_reserved_bit, hyperframe_frames.map(Frame.serialize) | unknown_frames, st.booleans()
)
buffers = st.lists(wire_frames, min_size=1, max_size=6).map(b"".join)


# -- 1. whole frames -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(buffers)
@example(HeadersFrame(1, flags=["PADDED"], pad_length=3).serialize())  # see `reference`
def test_reads_the_frames_hyperframe_reads(buffer: bytes) -> None:
    expected = reference_frames(buffer)
    found, stopped = read_all(buffer)
    assert found == [as_read(frame, payload) for frame, payload in expected]
    assert stopped == len(buffer)

    for frame, payload in expected:
        flags = flag_bits(frame)
        if isinstance(frame, DataFrame):
            assert f.unpad(flags, payload) == frame.data
        elif isinstance(frame, HeadersFrame):
            priority, block = header_block(flags, payload)
            assert block == frame.data
            if priority:
                depends_on = int.from_bytes(priority[:4])
                assert depends_on & MAX_STREAM == frame.depends_on
                assert bool(depends_on & RESERVED_BIT) == frame.exclusive
                assert priority[4] == frame.stream_weight


# -- 2. frames cut short -------------------------------------------------------------------------


@st.composite
def cut_buffers(draw: st.DrawFn) -> tuple[bytes, int]:
    """A buffer of whole frames and where to cut it: inside a frame, its header or its payload."""
    frames = draw(st.lists(wire_frames, min_size=1, max_size=4))
    cut_frame = draw(st.integers(0, len(frames) - 1))
    within = draw(st.integers(0, 8) | st.integers(0, len(frames[cut_frame]) - 1))
    return b"".join(frames), len(b"".join(frames[:cut_frame])) + within


@settings(max_examples=200, deadline=None, derandomize=True)
@given(cut_buffers())
def test_a_frame_cut_short_is_not_read_yet(buffer_and_cut: tuple[bytes, int]) -> None:
    buffer, cut = buffer_and_cut
    whole: list[Read] = []
    position = 0
    for frame, payload in reference_frames(buffer):
        position += 9 + len(payload)
        if position > cut:
            break
        whole.append(as_read(frame, payload))
    found, stopped = read_all(buffer[:cut])
    assert found == whole  # the frames before the cut, and None at the one cut short
    assert stopped == sum(9 + len(payload) for *_, payload in whole)


# -- 3. random bytes -----------------------------------------------------------------------------


raw_headers = st.builds(
    raw_header,
    st.integers(0, 40) | st.integers(0, 2**24 - 1),
    st.integers(0, 10) | st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),  # the reserved bit too
)
random_buffers = st.lists(raw_headers | st.binary(max_size=40), max_size=8).map(b"".join)


def hyperframe_header(header: bytes) -> tuple[int, int, int, int] | None:
    """(type, flags, stream id, length) as hyperframe reads a header; None when it refuses it
    (a stream id a type may not have, such as DATA on stream 0)."""
    try:
        frame, length = Frame.parse_frame_header(memoryview(header))
    except HyperframeError:
        return None
    assert frame.type is not None
    return frame.type, flag_bits(frame), frame.stream_id, length


@settings(max_examples=300, deadline=None, derandomize=True)
@given(random_buffers, st.data())
def test_random_bytes_are_read_as_hyperframe_reads_their_headers(
    buffer: bytes, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(buffer)), label="position")
    while True:
        header = buffer[position : position + 9]
        try:
            frame = f.next_frame(buffer, position)  # raises nothing but H2Error
        except f.H2Error as error:
            assert error.code == f.FRAME_SIZE_ERROR
            assert header_fields(header)[3] > MAX
            return
        if frame is None:  # not whole yet
            length = header_fields(header)[3] if len(header) == 9 else 0
            assert len(header) < 9 or MAX >= length > len(buffer) - position - 9
            return
        kind, flags, stream_id, start, stop = frame
        assert (kind, flags, stream_id, stop - start) == header_fields(header)
        reference_header = hyperframe_header(header)
        if reference_header is not None:
            assert reference_header == (kind, flags & known_flags(kind), stream_id, stop - start)
        position = stop


# -- 4. frames too long --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(wire_frames, max_size=2).map(b"".join),
    st.integers(MAX + 1, 2**24 - 1),
    raw_headers,
    st.integers(0, 100),
)
@example(b"", MAX + 1, b"\x00" * 9, 0)
def test_a_frame_longer_than_the_maximum_is_a_frame_size_error(
    before: bytes, length: int, header: bytes, present: int
) -> None:
    header = raw_header(length, 0, 0, 0)[:3] + header[3:]
    buffer = before + header + bytes(present)  # raised on the header alone, payload or not
    found, stopped = read_all(before)
    assert found == [as_read(*read) for read in reference_frames(before)]
    with pytest.raises(f.H2Error) as raised:
        f.next_frame(buffer, stopped)
    assert raised.value.code == f.FRAME_SIZE_ERROR


def test_a_frame_of_the_maximum_length_is_read() -> None:
    buffer = by_hand(f.DATA, 0, 1, bytes(MAX))
    assert f.next_frame(buffer, 0) == (f.DATA, 0, 1, 9, 9 + MAX)
    assert f.next_frame(buffer[:-1], 0) is None


# -- 5. padding ----------------------------------------------------------------------------------


@st.composite
def padded_payloads(draw: st.DrawFn) -> bytes:
    """A payload behind a PADDED flag; its pad length often near the payload's length."""
    rest = draw(st.binary(max_size=260))
    near = st.integers(max(0, len(rest) - 2), min(255, len(rest) + 2))
    return bytes([draw(near | st.integers(0, 255))]) + rest


def rfc_padding_error(flags: int, payload: bytes) -> bool:
    """RFC 9113 §6.1: "If the length of the padding is the length of the frame payload or
    greater, the recipient MUST treat this as a connection error" (the payload counts the Pad
    Length byte, so a pad length of len(payload) - 1 leaves empty data and is fine)."""
    return bool(flags & f.PADDED) and (not payload or payload[0] >= len(payload))


def hyperframe_body(kind: int, flags: int, payload: bytes) -> bytes | None:
    """hyperframe's data (DATA) or header block (HEADERS), None when it refuses the padding."""
    frame, _ = Frame.parse_frame_header(memoryview(by_hand(kind, flags, 1, b"")))
    try:
        frame.parse_body(memoryview(payload))
    except InvalidPaddingError:
        return None
    except InvalidFrameError:  # a PADDED payload without even its Pad Length byte
        assert not payload
        return None
    assert isinstance(frame, DataFrame | HeadersFrame)
    return frame.data


def assert_unpad_refuses(flags: int, payload: bytes) -> None:
    with pytest.raises(f.H2Error) as raised:
        f.unpad(flags, payload)
    if payload:  # RFC 9113 §6.1: PROTOCOL_ERROR
        assert raised.value.code == f.PROTOCOL_ERROR


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([0, f.END_STREAM]), st.booleans(), st.just(b"") | padded_payloads())
@example(0, True, b"\x03abc")  # pad length len(payload) - 1: empty data, allowed
@example(0, True, b"\x04abc")  # pad length len(payload): refused
def test_unpad_agrees_with_hyperframe_on_data(end: int, padded: bool, payload: bytes) -> None:
    flags = end | f.PADDED * padded
    data = hyperframe_body(f.DATA, flags, payload)
    assert (data is None) == rfc_padding_error(flags, payload)  # hyperframe follows the RFC here
    if data is None:
        assert_unpad_refuses(flags, payload)
    else:
        assert f.unpad(flags, payload) == data


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.just(b"") | padded_payloads())
@example(b"\x03abc")
def test_unpad_follows_the_rfc_on_headers(payload: bytes) -> None:
    flags = f.PADDED | f.END_HEADERS
    if rfc_padding_error(flags, payload):
        assert hyperframe_body(f.HEADERS, flags, payload) is None
        assert_unpad_refuses(flags, payload)
    elif payload[0] == len(payload) - 1:
        # hyperframe refuses this one and the RFC allows it (see `reference`)
        assert f.unpad(flags, payload) == b""
    else:
        assert f.unpad(flags, payload) == hyperframe_body(f.HEADERS, flags, payload)


# -- 6. the writers ------------------------------------------------------------------------------


def parse(wire: bytes) -> Frame:
    """hyperframe's reading of one whole frame; checks that `next_frame` reads it the same."""
    frame, payload = reference(wire, 0)
    assert 9 + len(payload) == len(wire)
    found, stopped = read_all(wire)
    assert found == [as_read(frame, payload)]
    assert stopped == len(wire)
    return frame


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.integers(0, 0xFFFF), codes, max_size=40))
def test_settings_as_hyperframe_reads_them(values: dict[int, int]) -> None:
    frame = parse(f.settings(values))
    assert isinstance(frame, SettingsFrame)
    assert (frame.stream_id, set(frame.flags), frame.settings) == (0, set(), values)


def test_settings_ack_as_hyperframe_reads_it() -> None:
    frame = parse(f.SETTINGS_ACK)
    assert isinstance(frame, SettingsFrame)
    assert (frame.stream_id, set(frame.flags), frame.settings) == (0, {"ACK"}, {})


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, MAX_STREAM), st.integers(1, f.MAX_WINDOW))
def test_window_update_as_hyperframe_reads_it(stream_id: int, increment: int) -> None:
    frame = parse(f.window_update(stream_id, increment))
    assert isinstance(frame, WindowUpdateFrame)
    assert (frame.stream_id, frame.window_increment) == (stream_id, increment)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(streams, codes)
def test_rst_stream_as_hyperframe_reads_it(stream_id: int, code: int) -> None:
    frame = parse(f.rst_stream(stream_id, code))
    assert isinstance(frame, RstStreamFrame)
    assert (frame.stream_id, frame.error_code) == (stream_id, code)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.integers(0, MAX_STREAM),
    codes,
    st.text(max_size=20)
    | st.builds(str.__mul__, st.text(min_size=1, max_size=8), st.integers(0, 100)),
)
def test_goaway_as_hyperframe_reads_it(last_stream_id: int, code: int, reason: str) -> None:
    frame = parse(f.goaway(last_stream_id, code, reason))
    assert isinstance(frame, GoAwayFrame)
    assert (frame.stream_id, frame.last_stream_id, frame.error_code) == (0, last_stream_id, code)
    assert frame.additional_data == reason.encode()[:256]  # cut to 256 bytes


def streams_for(kind: int) -> st.SearchStrategy[int]:
    """Stream ids hyperframe accepts for a frame type (RFC 9113 §6: DATA never on stream 0...)."""
    association = FRAMES[kind].stream_association if kind in FRAMES else "either"
    if association == "has-stream":
        return streams
    if association == "no-stream":
        return st.just(0)
    return st.integers(0, MAX_STREAM)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_any_frame_as_hyperframe_reads_its_header(data: st.DataObject) -> None:
    kind = data.draw(st.integers(0, 255), label="kind")
    flags = data.draw(st.integers(0, 255), label="flags")
    stream_id = data.draw(streams_for(kind), label="stream_id")
    payload = data.draw(blob(MAX), label="payload")
    wire = f.frame(kind, flags, stream_id, payload)
    assert wire == by_hand(kind, flags, stream_id, payload)
    assert hyperframe_header(wire[:9]) == (kind, flags & known_flags(kind), stream_id, len(payload))
    assert f.next_frame(wire, 0) == (kind, flags, stream_id, 9, len(wire))
    if kind in UNKNOWN_TYPES:
        frame, _ = reference(wire, 0)
        assert isinstance(frame, ExtensionFrame)
        assert frame.body == payload
