"""One HTTP/2 stream's state: RFC 9113 §5.1's states and transitions, as a table, and what a
request holds while it is open."""

from __future__ import annotations

import time
from enum import IntEnum

from ratelimitd.transport.h2.headers import RequestHead


class StreamState(IntEnum):
    """RFC 9113 §5.1, for a server that never pushes (no reserved states). Int enums: the
    table is looked up on every call, and a plain Enum hashes in Python."""

    IDLE = 0
    OPEN = 1
    HALF_CLOSED_REMOTE = 2  # the client ended its request
    HALF_CLOSED_LOCAL = 3  # we ended our answer first
    CLOSED = 4


class StreamEvent(IntEnum):
    RECV_HEADERS = 0
    RECV_END_STREAM = 1
    SEND_END_STREAM = 2
    RECV_RST_STREAM = 3
    SEND_RST_STREAM = 4


_S, _E = StreamState, StreamEvent
TRANSITIONS: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (_S.IDLE, _E.RECV_HEADERS): _S.OPEN,
    (_S.OPEN, _E.RECV_END_STREAM): _S.HALF_CLOSED_REMOTE,
    (_S.OPEN, _E.SEND_END_STREAM): _S.HALF_CLOSED_LOCAL,
    (_S.OPEN, _E.RECV_RST_STREAM): _S.CLOSED,
    (_S.OPEN, _E.SEND_RST_STREAM): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _E.SEND_END_STREAM): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _E.RECV_RST_STREAM): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _E.SEND_RST_STREAM): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _E.RECV_END_STREAM): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _E.RECV_RST_STREAM): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _E.SEND_RST_STREAM): _S.CLOSED,
}
_CLIENT_ENDED = frozenset((_S.HALF_CLOSED_REMOTE, _S.CLOSED))


class Stream:
    """One request's state on its connection; the layer above may add slots of its own."""

    __slots__ = (
        "backlog",
        "body",
        "content_length",
        "ended",
        "head",
        "headers_sent",
        "held",
        "id",
        "opened",
        "received",
        "refused",
        "reset_sent",
        "state",
        "streaming",
        "trailers",
        "unacknowledged",
        "window",
    )

    def __init__(
        self, stream_id: int, head: RequestHead, window: int, content_length: int | None
    ) -> None:
        self.id = stream_id
        self.head = head
        self.state = StreamState.OPEN
        self.ended = False  # nothing more may come from the client (`state` says so too)
        self.content_length = content_length
        self.received = 0  # body bytes, padding aside (to compare with content-length)
        self.held = 0  # request bytes kept (in `body`), not yet consumed
        self.opened = time.monotonic()
        self.reset_sent = False
        self.streaming = False  # request bytes go up as they come (`Events.request_data`)
        self.body = bytearray()
        self.unacknowledged = 0  # body bytes not yet given back with a WINDOW_UPDATE
        self.refused = False  # answered early (too large, bad message): later data is dropped
        self.window = window  # what we may still send on it
        self.headers_sent = False
        self.backlog = bytearray()  # DATA waiting for window
        self.trailers: bytes | None = None  # to go out once the backlog has

    def advance(self, event: StreamEvent) -> StreamState:
        """Moves the stream on by `event`, as RFC 9113 §5.1 says; KeyError if it may not."""
        self.state = state = TRANSITIONS[(self.state, event)]
        self.ended = state in _CLIENT_ENDED
        return state
