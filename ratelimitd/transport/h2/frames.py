"""HTTP/2 wire constants (RFC 9113) and the few frames the server writes, as bytes."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_SIZE = 9

# frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# settings
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1


class H2Error(Exception):
    """A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY and this code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


_HEAD = struct.Struct(">HBBBI")  # length (24 bits as 16 + 8), type, flags, stream id
_READ_HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id


def next_frame(buffer: bytes, position: int) -> tuple[int, int, int, int, int] | None:
    """The frame at `position`, when all of it is in `buffer`: (type, flags, stream id, where
    its payload starts, where it ends); None when it is not whole yet.

    Hand-written (not hyperframe's parser) for speed: it makes no frame object.
    tests/unit/test_h2_frames.py checks it against hyperframe. A frame longer than
    DEFAULT_MAX_FRAME (the largest we allow) is a FRAME_SIZE_ERROR.
    """
    start = position + HEADER_SIZE
    if len(buffer) < start:
        return None
    high, low, kind, flags, stream_id = _READ_HEAD.unpack_from(buffer, position)
    length = high << 16 | low
    if length > DEFAULT_MAX_FRAME:
        raise H2Error(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
    stop = start + length
    if stop > len(buffer):
        return None
    return kind, flags, stream_id & 0x7FFFFFFF, start, stop


def unpad(flags: int, payload: bytes) -> bytes:
    """A DATA or HEADERS payload without its padding (RFC 9113 §6.1)."""
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]
    return payload


def head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """A frame's 9-byte header."""
    return _HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return head(len(payload), kind, flags, stream_id) + payload


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in values.items()))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int, reason: str = "") -> bytes:
    payload = last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big")
    return frame(GOAWAY, 0, 0, payload + reason.encode()[:256])


SETTINGS_ACK = frame(SETTINGS, ACK, 0)
