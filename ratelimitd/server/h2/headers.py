"""Header blocks: requests' decoded with `hpack` (remembered), responses' written by hand.

A client keeps sending the same headers on a connection, and after the first call its HPACK
encoder sends them as indices into its dynamic table or as literals it chose not to index
(nghttp2 does so with `:path` and `content-length`): the same bytes each time. A block that
adds nothing to the table decodes the same way until some other block changes the table, so
those are remembered per connection; that saves `hpack`'s pure-Python decoder (Huffman
decoding alone was a tenth of the CPU under load) on nearly every call: all but the first
block of h2load's, and 199 of the 201 blocks Envoy (the deployed deploy/envoy/envoy.yaml)
sent for 200 requests in a probe.

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


def _integer(block: bytes, i: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 §5.1) starting at `i`: its value and the index after it."""
    mask = (1 << prefix_bits) - 1
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def leaves_table_alone(block: bytes) -> bool:
    """Whether decoding the block cannot change the dynamic table: it holds only indexed
    fields and literals "without indexing" or "never indexed" (RFC 7541 §6.1, §6.2.2-3), no
    literal "with incremental indexing" (§6.2.1) and no table size update (§6.3). A malformed
    block says False (the decoder then reports it)."""
    i, end = 0, len(block)
    try:
        while i < end:
            first = block[i]
            if first & 0x80:  # indexed
                _, i = _integer(block, i, 7)
                continue
            if first & 0xE0:  # 01xxxxxx incremental indexing, 001xxxxx size update
                return False
            index, i = _integer(block, i, 4)
            strings = 1 if index else 2  # the name too, when it is not from a table
            for _ in range(strings):
                length, i = _integer(block, i, 7)
                i += length
        return i == end
    except IndexError:
        return False


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
        if leaves_table_alone(block):
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
