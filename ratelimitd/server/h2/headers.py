"""Header blocks: requests' decoded with `hpack` (remembered), responses' written by hand.

A client keeps sending the same headers on a connection, and after the first call its HPACK
encoder sends them as indices into its dynamic table: the same few bytes each time. A block
made of indices only cannot change the table, so its decoding holds until some other block
changes the table; those are remembered per connection, which saves `hpack`'s pure-Python
decoder on nearly every call (Envoy's and h2load's blocks are all indices after the first).

Responses never use the dynamic table (literals "without indexing"), so every block here is
fixed bytes or fixed bytes plus a value; the client's table-size settings do not matter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import quote

import hpack

MAX_REMEMBERED_BLOCKS = 256
MAX_MESSAGE_CHARS = 1024  # grpc-message beyond this is cut (it is for people, not machines)

Headers = list[tuple[bytes, bytes]]
Parsed = TypeVar("Parsed")


def only_indices(block: bytes) -> bool:
    """Whether every field of an HPACK block is an indexed field (RFC 7541 §6.1)."""
    i, end = 0, len(block)
    while i < end:
        first = block[i]
        if first < 0x80:
            return False
        i += 1
        if first & 0x7F == 0x7F:  # the index continues in 7-bit groups
            while i < end and block[i] & 0x80:
                i += 1
            i += 1
    return True


class RequestHeaders(Generic[Parsed]):
    """One connection's HPACK decoder; blocks of indices only are remembered as `parse` read
    them."""

    def __init__(self, max_header_list_size: int, parse: Callable[[Headers], Parsed]) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._parse = parse
        self._remembered: dict[bytes, Parsed] = {}

    def read(self, block: bytes) -> Parsed:
        """Raises `hpack.HPACKError` on a bad block (a connection error: the table is lost)."""
        parsed = self._remembered.get(block)
        if parsed is not None:
            return parsed
        parsed = self._parse(self._decoder.decode(block, raw=True))  # type: ignore[arg-type]
        if only_indices(block):
            if len(self._remembered) >= MAX_REMEMBERED_BLOCKS:
                self._remembered.clear()
            self._remembered[block] = parsed
        else:  # the table may have changed under every remembered block
            self._remembered.clear()
        return parsed


def _length(value: int) -> bytes:
    """An HPACK string length (7-bit prefix, no Huffman)."""
    if value < 0x7F:
        return bytes((value,))
    out = bytearray((0x7F,))
    value -= 0x7F
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A field as a literal without indexing, with a literal name (RFC 7541 §6.2.2)."""
    return b"\x00" + _length(len(name)) + name + _length(len(value)) + value


STATUS_200 = b"\x88"  # static table index 8
CONTENT_TYPE_GRPC = b"\x0f\x10" + _length(16) + b"application/grpc"  # name: static index 31
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC
TRAILERS_OK = literal(b"grpc-status", b"0")


def http_status(code: int) -> bytes:
    """`:status` as a literal with the static table's name (index 8)."""
    text = str(code).encode()
    return b"\x08" + _length(len(text)) + text


def grpc_message(message: str) -> bytes:
    """Percent-encoded as the gRPC spec asks: UTF-8, then every byte outside 0x20-0x7E and
    '%' as %XX."""
    text = message[:MAX_MESSAGE_CHARS]
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8").encode()


def status_fields(code: int, message: str) -> bytes:
    fields = literal(b"grpc-status", str(code).encode())
    if message:
        fields += literal(b"grpc-message", grpc_message(message))
    return fields
