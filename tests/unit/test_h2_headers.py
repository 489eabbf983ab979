"""Header blocks of ratelimitd's HTTP/2 server: which request blocks may be remembered, and the
response fields it writes by hand (checked by decoding them with hpack)."""

from __future__ import annotations

import hpack
import pytest

from ratelimitd.transport.h2.headers import (
    RESPONSE_HEADERS,
    TRAILERS_OK,
    RequestHeaders,
    grpc_message,
    http_status,
    leaves_table_alone,
    status_fields,
)

REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def test_a_first_block_indexes_and_a_repeat_does_not() -> None:
    encoder = hpack.Encoder()
    first = encoder.encode(REQUEST)
    again = encoder.encode(REQUEST)
    assert not leaves_table_alone(first)  # literals with incremental indexing
    assert leaves_table_alone(again)  # indices only


def test_literals_without_indexing_leave_the_table_alone() -> None:
    encoder = hpack.Encoder()
    encoder.encode(REQUEST)
    block = encoder.encode(
        [*REQUEST, hpack.NeverIndexedHeaderTuple("authorization", "Bearer x" * 40)]
    )
    assert leaves_table_alone(block)
    # nghttp2 (h2load) sends :path and content-length as literals without indexing
    nghttp2 = bytes.fromhex(
        "04ab60b5773fa5d05b3b98855ec1a4b41a93257eecafb4692e735264ee2d9dcc42b1ba73db449b4692e73526"
        "4f86c183c0bfbe0f0d023331"
    )
    assert leaves_table_alone(nghttp2)


@pytest.mark.parametrize(
    "block",
    [
        b"\x3f\xe1\x1f",  # a table size update
        b"\x04\x85",  # a literal whose value is cut short
        b"\xff",  # an index cut short
    ],
)
def test_size_updates_and_cut_blocks_are_not_remembered(block: bytes) -> None:
    assert not leaves_table_alone(block)


def test_remembered_blocks_follow_table_changes() -> None:
    encoder = hpack.Encoder()
    seen = RequestHeaders(lambda headers: dict(headers), 16384, 65536)
    values = ["a", "a", "b", "a", "c", "c"]
    for tenant in values:
        block = encoder.encode([*REQUEST, ("x-tenant", tenant)])
        assert seen.read(block)[0][b"x-tenant"] == tenant.encode()


def test_response_blocks_decode_to_what_grpc_expects() -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(RESPONSE_HEADERS) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
    ]
    assert decoder.decode(TRAILERS_OK) == [("grpc-status", "0")]
    assert decoder.decode(http_status(415)) == [(":status", "415")]
    long = "x" * 300 + " ünïcode %"
    assert decoder.decode(status_fields(8, long)) == [
        ("grpc-status", "8"),
        ("grpc-message", "x" * 300 + " %C3%BCn%C3%AFcode %25"),
    ]


def test_grpc_message_is_cut_and_percent_encoded() -> None:
    assert grpc_message("over limit: 5/min") == b"over limit: 5/min"
    assert grpc_message("\n") == b"%0A"
    assert len(grpc_message("é" * 5000)) == 1024 * 6
