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
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote

import grpc
import hpack

MAX_REMEMBERED_BLOCKS = 64
MAX_MESSAGE_CHARS = 1024  # grpc-message beyond this is cut (it is for people, not machines)

Headers = list[tuple[bytes, bytes]]
Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What a gRPC request's headers say, read once per distinct header block."""

    path: str
    handler: grpc.RpcMethodHandler | None
    timeout: float | None
    metadata: Metadata
    refusal: bytes | None  # a complete answer (header block) when the call cannot start
    streaming: bool = False  # its bytes go up as they come (else: its whole body at the end)


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


class Malformed(Exception):
    """A request header block RFC 9113 §8.1.1 calls malformed: a stream error of type
    PROTOCOL_ERROR for that request, the connection goes on."""


class TooLarge(Exception):
    """A decoded header list over the connection's limit: that call fails."""


_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_REQUIRED_PSEUDO = (b":method", b":scheme", b":path")
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
FIELD_OVERHEAD = 32  # what each field adds to a header list's size (RFC 9113 §6.5.2)


def list_size(headers: Headers) -> int:
    return sum(len(name) + len(value) + FIELD_OVERHEAD for name, value in headers)


def _check_field(name: bytes, value: bytes) -> None:
    if name.lower() != name:
        raise Malformed(f"an uppercase header name {name!r}")
    if name in _CONNECTION_SPECIFIC:
        raise Malformed(f"a connection-specific header {name!r}")
    if name == b"te" and value != b"trailers":
        raise Malformed("te other than trailers")


def check_request(headers: Headers) -> int | None:
    """Raises `Malformed` unless the headers make a well-formed request (RFC 9113 §8.3.1);
    returns its content-length, if it says one."""
    seen: set[bytes] = set()
    regular = False
    content_length = None
    for name, value in headers:
        if name.startswith(b":"):
            if regular:
                raise Malformed(f"pseudo-header {name!r} after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise Malformed(f"pseudo-header {name!r} in a request")
            if name in seen:
                raise Malformed(f"pseudo-header {name!r} twice")
            seen.add(name)
            continue
        regular = True
        _check_field(name, value)
        if name == b"content-length":
            if not value.isdigit() or content_length is not None:
                raise Malformed("a bad content-length")
            content_length = int(value)
    missing = [name for name in _REQUIRED_PSEUDO if name not in seen]
    if missing:
        raise Malformed(f"no {b', '.join(missing).decode()}")
    if not dict(headers)[b":path"]:
        raise Malformed("an empty :path")
    return content_length


def check_trailers(headers: Headers) -> None:
    for name, value in headers:
        if name.startswith(b":"):
            raise Malformed(f"pseudo-header {name!r} in trailers")
        _check_field(name, value)


class RequestHeaders(Generic[Parsed]):
    """One connection's HPACK decoder; blocks of indices only are remembered as `parse` read
    them (a bounded number, small ones only).

    Decoding stops with `hpack.OversizedHeaderListError` past `hard_limit` (a connection
    error: the table is lost); a list over `soft_limit` raises `TooLarge`, a malformed one
    `Malformed`, with the table intact (the connection goes on)."""

    def __init__(
        self,
        parse: Callable[[Headers], Parsed],
        soft_limit: int,
        hard_limit: int,
        remembered_blocks: int = MAX_REMEMBERED_BLOCKS,
        remembered_block_size: int = 1024,
    ) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=hard_limit)
        self._parse = parse
        self._soft_limit = soft_limit
        self._max_blocks = remembered_blocks
        self._max_block_size = remembered_block_size
        self._remembered: dict[bytes, tuple[Parsed, int | None]] = {}

    def read(self, block: bytes) -> tuple[Parsed, int | None]:
        """The parsed request and its content-length."""
        remembered = self._remembered.get(block)
        if remembered is not None:
            return remembered
        headers: Headers = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        rememberable = leaves_table_alone(block)
        if not rememberable:  # the table may have changed under every remembered block
            self._remembered.clear()
        size = list_size(headers)
        if size > self._soft_limit:
            raise TooLarge(f"a header list of {size} bytes, over {self._soft_limit}")
        read = self._parse(headers), check_request(headers)
        if rememberable and len(block) <= self._max_block_size:
            if len(self._remembered) >= self._max_blocks:
                self._remembered.clear()
            self._remembered[block] = read
        return read

    def read_trailers(self, block: bytes) -> None:
        headers: Headers = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        self._remembered.clear()  # rare: no need to know whether the table moved
        check_trailers(headers)


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


GRPC_DEADLINE_EXCEEDED = 4
GRPC_RESOURCE_EXHAUSTED = 8


def status_fields(code: int, message: str) -> bytes:
    fields = literal(b"grpc-status", str(code).encode())
    if message:
        fields += literal(b"grpc-message", grpc_message(message))
    return fields


def trailers_only(code: int, message: str) -> bytes:
    """A complete answer in one header block: `:status` 200 and a gRPC status."""
    return RESPONSE_HEADERS + status_fields(code, message)
