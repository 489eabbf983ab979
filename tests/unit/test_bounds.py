"""Request bounds: anything beyond them is InvalidRequest with a message saying what."""

from __future__ import annotations

import pytest

from ratelimitd.errors import InvalidRequest
from ratelimitd.limiter import Bounds, validate
from ratelimitd.model import Descriptor, Request

BOUNDS = Bounds(
    max_descriptors=3, max_entries=2, max_key_length=5, max_value_length=8, max_hits=100
)


def req(*descriptors: Descriptor, domain: str = "d", hits: int = 1) -> Request:
    return Request(domain, descriptors, hits)


ONE = Descriptor((("k", "v"),))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (req(ONE, domain="domain"), "domain is longer than 5 characters"),
        (req(ONE, ONE, ONE, ONE), "4 descriptors: at most 3 are allowed"),
        (
            req(Descriptor((("a", ""), ("b", ""), ("c", "")))),
            "descriptors[0] has 3 entries: at most 2 are allowed",
        ),
        (
            req(Descriptor((("key123", "v"),))),
            "descriptors[0].entries[0].key is longer than 5 characters",
        ),
        (
            req(ONE, Descriptor((("k", "123456789"),))),
            "descriptors[1].entries[0].value is longer than 8 characters",
        ),
        (req(ONE, hits=101), "hits_addend 101 is over 100"),
        (
            req(Descriptor((("k", "v"),), hits_addend=2**64 - 1)),
            "descriptors[0].hits_addend 18446744073709551615 is over 100",
        ),
    ],
)
def test_over_the_bounds(request_: Request, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(request_, BOUNDS)
    assert str(caught.value) == message


def test_at_the_bounds() -> None:
    validate(
        req(Descriptor((("key12", "12345678"), ("b", ""))), ONE, ONE, domain="dom45", hits=100),
        BOUNDS,
    )
