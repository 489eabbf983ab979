"""The hand-written response encoder gives exactly the bytes protobuf gives."""

from __future__ import annotations

from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import given
from hypothesis import strategies as st

from ratelimitd.model import Algorithm, Code, Decision, Limit, Status, Unit
from ratelimitd.services.convert import decision_to_proto
from ratelimitd.services.encode import ResponseEncoder, varint

limits = st.builds(
    Limit,
    requests_per_unit=st.integers(0, 2**32 - 1),
    unit=st.sampled_from(list(Unit)),
    unit_multiplier=st.integers(1, 100),
    algorithm=st.sampled_from(list(Algorithm)),
    name=st.text(max_size=40),
)
statuses = st.builds(
    Status,
    code=st.sampled_from(list(Code)),
    limit=st.none() | limits,
    remaining=st.integers(0, 2**32 - 1),
    reset_after=st.one_of(
        st.just(0.0),
        st.floats(min_value=-5, max_value=400 * 86400, allow_nan=False),
        st.integers(0, 10**6).map(float),
    ),
)
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
decisions = st.builds(
    Decision,
    overall=st.sampled_from(list(Code)),
    statuses=st.lists(statuses, max_size=8).map(tuple),
    dynamic_metadata=st.none() | st.dictionaries(st.text(max_size=8), plain, max_size=4),
)


@given(decisions)
def test_bytes_equal_protobufs_own(decision: Decision) -> None:
    encoder = ResponseEncoder()
    expected = decision_to_proto(decision).SerializeToString()
    assert encoder.response(decision) == expected
    assert encoder.response(decision) == expected  # again, from the memo of limits


def test_a_limit_memo_never_answers_for_another_limit() -> None:
    encoder = ResponseEncoder()
    for requests in range(1, 200):  # short-lived limits: ids get reused by later ones
        decision = Decision(Code.OK, (Status(Code.OK, Limit(requests, Unit.MINUTE), 1, 1.0),))
        assert encoder.response(decision) == decision_to_proto(decision).SerializeToString()


@given(st.integers(0, 2**64 - 1))
def test_varint_matches_protobufs_own(number: int) -> None:
    assert varint(number) == _VarintBytes(number)


def test_varint() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(2**32 - 1) == b"\xff\xff\xff\xff\x0f"
    for edge in (
        0x3FFF,
        0x4000,
        0x1FFFFF,
        0x200000,
        0xFFFFFFF,
        0x10000000,
        2**35 - 1,
        2**35,
    ):  # where the unrolled sizes change
        assert varint(edge) == _VarintBytes(edge)
