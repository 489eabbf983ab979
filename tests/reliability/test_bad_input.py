"""Bad input, fuzzed, against a real `ratelimitd serve` process on Redis.

Every ShouldRateLimit and admin call gets a valid response, or INVALID_ARGUMENT /
RESOURCE_EXHAUSTED with a message naming what is wrong, exactly when the request breaks a
documented bound (README: "Bad requests get INVALID_ARGUMENT ..."); the process never dies and
never logs a traceback. The config loader, fed random YAML, raises `ConfigError` or returns a
valid config, nothing else.
"""

from __future__ import annotations

import re
import string
import textwrap
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format
from google.protobuf.wrappers_pb2 import UInt64Value
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as admin_pb_grpc
from ratelimitd.config import RateLimitConfig, config_from_texts
from ratelimitd.errors import ConfigError
from tests.reliability.conftest import Record
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess

TOKEN = "fuzz-token"
DEPTH = 32  # RATELIMITD_MAX_ENTRIES: the deepest descriptor a request may carry
MAX_DESCRIPTORS, MAX_ENTRIES, MAX_KEY, MAX_VALUE = 256, 32, 1024, 4096
MAX_HITS = 2**32 - 1
MAX_MESSAGE = 4 * 1024 * 1024
UNITS = {1, 2, 3, 4, 5, 6, 7}  # SECOND .. YEAR, WEEK; 0 is UNKNOWN

DEEP = "".join(
    textwrap.indent(f"- key: d{i}\n  descriptors:\n", "    " * i) for i in range(DEPTH - 1)
) + textwrap.indent(
    f"- key: d{DEPTH - 1}\n  rate_limit: {{unit: hour, requests_per_unit: 10}}\n",
    "    " * (DEPTH - 1),
)
RULES = f"""
domain: fuzz
descriptors:
  - key: k
    rate_limit: {{unit: second, requests_per_unit: 1000000}}
    descriptors:
      - key: k2
        rate_limit: {{unit: minute, requests_per_unit: 5, algorithm: sliding_window}}
  - key: tb
    rate_limit: {{unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20}}
  - key: user
    detailed_metric: true
    rate_limit: {{unit: hour, requests_per_unit: 100}}
  - key: wild
    value: "a*"
    share_threshold: true
    rate_limit: {{unit: minute, requests_per_unit: 3}}
  - key: free
    rate_limit: {{unlimited: true}}
---
domain: "ünï|{{cødé}}=%\\t"
descriptors:
  - key: "k|="
    rate_limit: {{unit: day, requests_per_unit: 2}}
---
domain: deep
descriptors:
{textwrap.indent(DEEP, "  ")}
"""
DOMAINS = ["fuzz", "ünï|{cødé}=%\t", "deep"]
KEYS = ["k", "k2", "tb", "user", "wild", "free", "k|=", *(f"d{i}" for i in range(DEPTH))]
SEEN: Counter[str] = Counter()  # how each fuzzed call was answered, for the figures
ADVERSARIAL = "%|={}*:\\\"'\x00\x01\x1f\x7f\x85\u2028\ufeff\U0001f600é ab"


def test_the_deep_rule_is_32_levels() -> None:
    config = config_from_texts([("rules.yaml", RULES)])
    assert config.match("deep", tuple((f"d{i}", "x") for i in range(DEPTH))) is not None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    rules = tmp_path_factory.mktemp("fuzz") / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    with (
        RedisServer() as redis_server,
        ServiceProcess(
            rules,
            {
                "RATELIMITD_REDIS_URL": redis_server.url,
                "RATELIMITD_REDIS_TIMEOUT_MS": "2000",
                "RATELIMITD_ADMIN_TOKEN": TOKEN,
                "RATELIMITD_LOG_LEVEL": "debug",  # denials too, with their (hashed) values
                "RATELIMITD_LOG_FORMAT": "json",
                "RATELIMITD_DETAILED_METRIC_MAX_VALUES": "20",
            },
        ) as process,
    ):
        yield process


def full_log(service: ServiceProcess) -> str:
    # ServiceProcess.log() keeps only the tail; the whole file is what may not hold a traceback
    return Path(service._log.name).read_text(errors="replace")


def assert_alive_without_traceback(service: ServiceProcess) -> None:
    assert service.process is not None and service.process.poll() is None, service.log()
    log = full_log(service)
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000) :][:4000]


@pytest.fixture(scope="module")
def channel(service: ServiceProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.target) as open_channel:
        yield open_channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> rls_pb2_grpc.RateLimitServiceStub:
    return rls_pb2_grpc.RateLimitServiceStub(channel)


@pytest.fixture(scope="module")
def admin(channel: grpc.Channel) -> admin_pb_grpc.RateLimitAdminStub:
    return admin_pb_grpc.RateLimitAdminStub(channel)  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------- #
# What the README promises, as an oracle
# --------------------------------------------------------------------------------------- #


def violation(request: rls_pb2.RateLimitRequest) -> str | None:
    """Which documented bound `request` breaks (a word its error must name), or None."""
    if request.ByteSize() > MAX_MESSAGE:
        return "size"
    for d in request.descriptors:
        if d.HasField("limit") and d.limit.unit not in UNITS:
            return "descriptors"
    if not request.domain or len(request.domain) > MAX_KEY:
        return "domain"
    if not request.descriptors or len(request.descriptors) > MAX_DESCRIPTORS:
        return "descriptors"
    for d in request.descriptors:
        if not d.entries or len(d.entries) > MAX_ENTRIES:
            return "descriptors"
        if d.HasField("hits_addend") and d.hits_addend.value > MAX_HITS:
            return "hits_addend"
        for entry in d.entries:
            if not entry.key or len(entry.key) > MAX_KEY or len(entry.value) > MAX_VALUE:
                return "descriptors"
    return None


def check_answer(
    stub: rls_pb2_grpc.RateLimitServiceStub, request: rls_pb2.RateLimitRequest
) -> None:
    expected = violation(request)
    try:
        reply = stub.ShouldRateLimit(request, timeout=30)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        SEEN[f"ShouldRateLimit {code.name}"] += 1
        assert expected is not None, f"{code}: {details} for a valid request"
        if expected == "size":
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            assert expected in details or "descriptors" in details, details
        assert details.strip()
        return
    SEEN["ShouldRateLimit OK"] += 1
    assert expected is None, f"answered a request that breaks a bound ({expected})"
    assert reply.overall_code in (
        rls_pb2.RateLimitResponse.OK,
        rls_pb2.RateLimitResponse.OVER_LIMIT,
    )
    assert len(reply.statuses) == len(request.descriptors)
    for status in reply.statuses:
        assert status.code in (rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT)


# --------------------------------------------------------------------------------------- #
# Strategies
# --------------------------------------------------------------------------------------- #

# Two families: "fair" requests keep within every bound, with any content (unicode, control
# characters, separators, lengths up to the bounds), so the decision path itself is fuzzed;
# "wild" ones go anywhere, so most break some bound. Hypothesis mixes them.
lengths_at_the_bounds = st.sampled_from([1, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097])
long_texts = st.builds(
    lambda char, n: char * n, st.characters(exclude_categories=["Cs"]), lengths_at_the_bounds
)
short_texts = st.one_of(
    st.text(max_size=24),  # any code point but surrogates (protobuf strings are UTF-8)
    st.text(alphabet=ADVERSARIAL, max_size=24),
    st.text(alphabet=string.printable, max_size=8),
)
texts = st.one_of(short_texts, long_texts, st.just(""))
fair_keys = st.one_of(st.sampled_from(KEYS), short_texts.filter(bool))
fair_values = st.one_of(
    st.sampled_from(["", "x", "a", "a*", "abc", "*"]),
    short_texts,
    long_texts.filter(lambda v: len(v) <= MAX_VALUE),
)
fair_domains = st.one_of(st.sampled_from(DOMAINS), short_texts.filter(bool))
hits = st.one_of(st.sampled_from([0, 1, 2, MAX_HITS]), st.integers(0, MAX_HITS))
fair_descriptor_hits = st.one_of(st.none(), st.sampled_from([0, 1, 2, MAX_HITS]))
wild_descriptor_hits = st.one_of(
    st.none(), st.sampled_from([MAX_HITS + 1, 2**64 - 1]), st.integers(0, 2**64 - 1)
)
fair_overrides = st.one_of(
    st.none(), st.tuples(st.sampled_from(sorted(UNITS)), st.sampled_from([0, 1, 5, MAX_HITS]))
)
wild_overrides = st.one_of(
    st.none(), st.tuples(st.sampled_from([0, 8, 99]), st.sampled_from([0, 1, MAX_HITS]))
)
fair_entry_lists = st.one_of(
    st.lists(st.tuples(fair_keys, fair_values), min_size=1, max_size=4),
    st.integers(1, DEPTH).map(lambda n: [(f"d{i}", f"v{i}") for i in range(n)]),
    st.sampled_from([[("k", "a")], [("k", "a"), ("k2", "b")], [("tb", "t")], [("wild", "abc")]]),
)
wild_entry_lists = st.one_of(
    st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), texts), texts), max_size=4),
    st.integers(0, DEPTH + 2).map(lambda n: [(f"d{i}", f"v{i}") for i in range(n)]),
    st.lists(st.tuples(fair_keys, fair_values), min_size=MAX_ENTRIES, max_size=MAX_ENTRIES + 2),
)


@st.composite
def descriptors(draw: st.DrawFn, fair: bool) -> ratelimit_pb2.RateLimitDescriptor:
    entries = draw(fair_entry_lists if fair else wild_entry_lists)
    message = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    addend = draw(fair_descriptor_hits if fair else wild_descriptor_hits)
    if addend is not None:
        message.hits_addend.CopyFrom(UInt64Value(value=addend))
    override = draw(fair_overrides if fair else wild_overrides)
    if override is not None:
        message.limit.unit, message.limit.requests_per_unit = override
    return message


def _request(
    domain: str, items: list[ratelimit_pb2.RateLimitDescriptor], addend: int
) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=items, hits_addend=addend)


fair_requests = st.builds(
    _request, fair_domains, st.lists(descriptors(fair=True), min_size=1, max_size=6), hits
)
wild_requests = st.builds(
    _request,
    st.one_of(fair_domains, texts),
    st.lists(st.one_of(descriptors(fair=True), descriptors(fair=False)), max_size=6),
    hits,
)
requests = st.one_of(fair_requests, fair_requests, wild_requests)
admin_items = st.one_of(
    st.lists(fair_entry_lists, min_size=1, max_size=4),
    st.lists(st.one_of(fair_entry_lists, wild_entry_lists), max_size=4),
)
admin_domains = st.one_of(fair_domains, texts)


def request_of(
    domain: str = "fuzz",
    count: int = 1,
    entries: list[tuple[str, str]] | None = None,
    hits: int = 0,
    descriptor_hits: int | None = None,
    unit: int | None = None,
) -> rls_pb2.RateLimitRequest:
    one = ratelimit_pb2.RateLimitDescriptor(
        entries=[
            ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)
            for k, v in (entries if entries is not None else [("k", "v")])
        ]
    )
    if descriptor_hits is not None:
        one.hits_addend.CopyFrom(UInt64Value(value=descriptor_hits))
    if unit is not None:
        one.limit.unit, one.limit.requests_per_unit = unit, 10
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=[one] * count, hits_addend=hits)


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------------- #
# ShouldRateLimit
# --------------------------------------------------------------------------------------- #


@FUZZ
@given(request=requests)
@example(request=request_of(domain=""))
@example(request=request_of(count=0))
@example(request=request_of(entries=[]))
@example(request=request_of(entries=[("", "v")]))
@example(request=request_of(entries=[("k", "\x00\x01\x1b[31m\r\n")]))
@example(request=request_of(hits=0))
@example(request=request_of(hits=1))
@example(request=request_of(hits=MAX_HITS))
@example(request=request_of(descriptor_hits=0))
@example(request=request_of(descriptor_hits=MAX_HITS))
@example(request=request_of(descriptor_hits=MAX_HITS + 1))
@example(request=request_of(descriptor_hits=2**64 - 1))
@example(request=request_of(unit=0))
@example(request=request_of(unit=7))
@example(request=request_of(unit=99))
def test_should_rate_limit_fuzzed(
    request: rls_pb2.RateLimitRequest,
    stub: rls_pb2_grpc.RateLimitServiceStub,
    service: ServiceProcess,
) -> None:
    check_answer(stub, request)


BOUND_CASES = [
    ("10000-descriptors", request_of(count=10_000), "10000 descriptors: at most 256 are allowed"),
    ("256-descriptors", request_of(count=MAX_DESCRIPTORS), None),
    (
        "257-descriptors",
        request_of(count=MAX_DESCRIPTORS + 1),
        "257 descriptors: at most 256 are allowed",
    ),
    ("32-deep", request_of(domain="deep", entries=[(f"d{i}", "v") for i in range(DEPTH)]), None),
    (
        "33-deep",
        request_of(domain="deep", entries=[(f"d{i}", "v") for i in range(DEPTH + 1)]),
        "descriptors[0] has 33 entries: at most 32 are allowed",
    ),
    ("domain-1024", request_of(domain="d" * MAX_KEY), None),
    (
        "domain-1025",
        request_of(domain="d" * (MAX_KEY + 1)),
        "domain is longer than 1024 characters",
    ),
    ("domain-1024-two-byte-chars", request_of(domain="é" * MAX_KEY), None),
    ("key-1024", request_of(entries=[("k" * MAX_KEY, "v")]), None),
    (
        "key-1025",
        request_of(entries=[("k" * (MAX_KEY + 1), "v")]),
        "descriptors[0].entries[0].key is longer than 1024 characters",
    ),
    ("value-4096", request_of(entries=[("k", "v" * MAX_VALUE)]), None),
    ("value-4096-emoji", request_of(entries=[("k", "\U0001f600" * MAX_VALUE)]), None),
    (
        "value-4097",
        request_of(entries=[("k", "v" * (MAX_VALUE + 1))]),
        "descriptors[0].entries[0].value is longer than 4096 characters",
    ),
    ("hits-uint32-max", request_of(hits=MAX_HITS), None),
    (
        "descriptor-hits-uint64-max",
        request_of(descriptor_hits=2**64 - 1),
        "descriptors[0].hits_addend 18446744073709551615 is over 4294967295",
    ),
    (
        "override-unit-unknown",
        request_of(unit=0),
        "descriptors[0].limit has unit 0: expected SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR",
    ),
]


@pytest.mark.parametrize(
    ("request_", "message"),
    [pytest.param(request, message, id=name) for name, request, message in BOUND_CASES],
)
def test_bounds_through_grpc(
    request_: rls_pb2.RateLimitRequest,
    message: str | None,
    stub: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    check_answer(stub, request_)
    if message is not None:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ShouldRateLimit(request_, timeout=30)
        assert caught.value.details() == message


def test_a_message_over_the_size_limit_is_resource_exhausted(
    stub: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    huge = request_of(count=2, entries=[("k", "x" * (3 * 1024 * 1024))])
    assert huge.ByteSize() > MAX_MESSAGE
    with pytest.raises(grpc.RpcError) as caught:
        stub.ShouldRateLimit(huge, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"larger than max|too large|exceed", caught.value.details() or "", re.I)
    assert stub.ShouldRateLimit(request_of(), timeout=30).statuses


# --------------------------------------------------------------------------------------- #
# The admin API
# --------------------------------------------------------------------------------------- #


def admin_violation(domain: str, items: list[list[tuple[str, str]]]) -> bool:
    fake = rls_pb2.RateLimitRequest(
        domain=domain,
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d]
            )
            for d in items
        ],
    )
    return violation(fake) is not None


good_auth = st.sampled_from(
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN} "]
)
wrong_tokens = st.text(alphabet=string.printable.strip() + " ", max_size=40).filter(
    lambda t: TOKEN not in t
)
bad_auth = st.one_of(
    st.none(),  # no header at all
    st.just(""),
    st.just("Bearer"),
    st.just("Bearer "),
    st.just(TOKEN),
    st.just(f"Basic {TOKEN}"),
    st.just(f"Token {TOKEN}"),
    st.just(f"Bearer {TOKEN[:-1]}"),
    st.just(f"Bearer {TOKEN}x"),
    st.just(f"Bearer {TOKEN.upper()}"),
    wrong_tokens.map(lambda t: f"Bearer {t}"),
    wrong_tokens,
)


@FUZZ
@given(
    call=st.sampled_from(["Peek", "Reset", "GetConfig"]),
    domain=admin_domains,
    items=admin_items,
    authorization=st.one_of(
        good_auth.map(lambda a: (a, True)),
        good_auth.map(lambda a: (a, True)),
        bad_auth.map(lambda a: (a, False)),
    ),
)
def test_admin_api_fuzzed(
    call: str,
    domain: str,
    items: list[list[tuple[str, str]]],
    authorization: tuple[str | None, bool],
    admin: admin_pb_grpc.RateLimitAdminStub,
) -> None:
    header, authorized = authorization
    metadata = () if header is None else (("authorization", header),)
    descriptors_ = [
        admin_pb.Descriptor(entries=[admin_pb.Entry(key=k, value=v) for k, v in d]) for d in items
    ]
    method = getattr(admin, call)
    message = (
        admin_pb.GetConfigRequest()
        if call == "GetConfig"
        else getattr(admin_pb, f"{call}Request")(domain=domain, descriptors=descriptors_)
    )
    try:
        method(message, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code()
        SEEN[f"{call} {code.name}"] += 1
        if not authorized:
            assert code == grpc.StatusCode.UNAUTHENTICATED, (code, exc.details())
            assert exc.details() == "missing or wrong 'authorization: Bearer' token"
            return
        assert call != "GetConfig", (code, exc.details())
        assert admin_violation(domain, items), (code, exc.details())
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, exc.details())
        assert exc.details()
        return
    SEEN[f"{call} OK"] += 1
    assert authorized, f"{call} answered with authorization {header!r}"
    assert call == "GetConfig" or not admin_violation(domain, items)


# --------------------------------------------------------------------------------------- #
# Wire-level garbage and the HTTP endpoint
# --------------------------------------------------------------------------------------- #

VALID_WIRE = request_of().SerializeToString()


def test_malformed_wire_bytes_are_invalid_argument_without_a_traceback(tmp_path: Path) -> None:
    payloads = {
        "bad-utf8": VALID_WIRE.replace(b"fuzz", b"fu\xffz"),  # a string that is not UTF-8
        "garbage": b"\xff\xff\xff\xff",  # not protobuf
        "truncated": VALID_WIRE[:-3],
    }
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    with (
        ServiceProcess(rules) as process,
        grpc.insecure_channel(process.target) as raw_channel,
    ):
        raw = raw_channel.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        )
        codes = {}
        for name, payload in payloads.items():
            with pytest.raises(grpc.RpcError) as caught:
                raw(payload, timeout=10)
            codes[name] = caught.value.code()
        assert set(codes.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
        assert_alive_without_traceback(process)


@settings(max_examples=60, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.builds(lambda r: json_format.MessageToJson(r).encode(), requests),
    )
)
def test_http_json_endpoint_fuzzed(body: bytes, service: ServiceProcess) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{service.http_port}/json", data=body)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status = int(reply.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
    SEEN[f"POST /json {status}"] += 1
    assert status in (200, 400, 429), status


# --------------------------------------------------------------------------------------- #
# The config loader
# --------------------------------------------------------------------------------------- #

VOCABULARY = [
    "domain", "descriptors", "key", "value", "rate_limit", "rate_limits", "unit",
    "requests_per_unit", "unlimited", "name", "replaces", "shadow_mode", "detailed_metric",
    "share_threshold", "metadata", "quota_mode", "value_to_metric", "unit_multiplier",
    "algorithm", "burst", "second", "minute", "hour", "day", "week", "month", "year",
    "fixed_window", "sliding_window", "token_bucket", "*", "a*", "",
]  # fmt: skip
scalars = st.one_of(
    st.sampled_from(VOCABULARY),
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, 1, 2**32 - 1, 2**32, -1]),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(VOCABULARY), scalars), children, max_size=5),
    ),
    max_leaves=40,
)
VALID = textwrap.dedent(RULES)
units = st.sampled_from(["second", "minute", "hour", "day", "week", "month", "year", "SECOND"])


@st.composite
def limits(draw: st.DrawFn) -> dict[str, object]:
    odd = draw(st.integers(0, 9)) == 0  # now and then, a value of the wrong kind
    limit: dict[str, object] = {"unit": draw(scalars if odd else units)}
    limit["requests_per_unit"] = draw(scalars if odd else st.integers(0, 2**32 - 1))
    algorithm = draw(st.sampled_from([None, "fixed_window", "sliding_window", "token_bucket"]))
    if algorithm is not None:
        limit["algorithm"] = algorithm
    if algorithm == "token_bucket" and draw(st.booleans()):
        limit["burst"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        limit["name"] = draw(st.text(max_size=8))
    if draw(st.integers(0, 9)) == 0:
        limit["unit_multiplier"] = draw(st.integers(0, 100))
    return limit


@st.composite
def descriptor_nodes(draw: st.DrawFn, depth: int = 0) -> dict[str, object]:
    node: dict[str, object] = {"key": draw(st.one_of(short_texts, st.sampled_from(KEYS)))}
    if draw(st.booleans()):
        node["value"] = draw(st.one_of(short_texts, st.sampled_from(["a*", "*", "x"])))
    choice = draw(st.integers(0, 5))
    if choice <= 2:
        node["rate_limit"] = draw(limits())
    elif choice == 3:
        node["rate_limits"] = draw(st.lists(limits(), min_size=1, max_size=3))
    elif choice == 4:
        node["rate_limit"] = {"unlimited": True}
    for flag in ("shadow_mode", "detailed_metric", "share_threshold"):
        if draw(st.integers(0, 7)) == 0:
            node[flag] = draw(st.booleans())
    if depth < 3 and draw(st.integers(0, 2)) == 0:
        node["descriptors"] = draw(st.lists(descriptor_nodes(depth + 1), max_size=3))
    return node


shaped_configs = st.builds(
    lambda domain, nodes: {"domain": domain, "descriptors": nodes},
    st.one_of(short_texts, st.sampled_from(["edge", "api"])),
    st.lists(descriptor_nodes(), max_size=5),
).map(lambda doc: yaml.safe_dump(doc, allow_unicode=True))


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for position, cut, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + cut :]
    return text


yaml_texts = st.one_of(
    shaped_configs,
    shaped_configs,
    st.text(alphabet=":-[]{}&*!|>'\"%@`#,? \n\t" + string.ascii_letters + "0123", max_size=200),
    st.text(max_size=200),
    documents.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)),
    st.dictionaries(st.sampled_from(["domain", "descriptors"]), documents).map(
        lambda doc: yaml.safe_dump(doc, allow_unicode=True)
    ),
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.integers(0, 8),
            st.sampled_from(["", ":", "- ", "\n", "  ", "{", "*", "&a ", "!!str ", "'", "\x00"]),
        ),
        min_size=1,
        max_size=4,
    ).map(lambda edits: mutate(VALID, edits)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts)
@example(text="")
@example(text="---\n---\n")
@example(text="domain: a\n---\ndomain: a\n")
@example(text="a: &a [*a]")
@example(text="domain: !!binary aGVsbG8=")
@example(text="!!python/object/apply:os.system ['true']")
@example(
    text="domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: .nan}\n"
)
@example(text="[" * 100)
def test_config_loader_fuzzed(text: str) -> None:
    try:
        config = config_from_texts([("fuzz.yaml", text)])
    except ConfigError as exc:
        SEEN["config_from_texts ConfigError"] += 1
        assert exc.errors and all(e.startswith("fuzz.yaml") for e in exc.errors), exc.errors
        return
    SEEN["config_from_texts valid"] += 1
    assert isinstance(config, RateLimitConfig)
    assert config.domains


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,
        "{a: " * 2000,
        "domain: d\ndescriptors:\n"
        + "".join(textwrap.indent("- key: k\n  descriptors:\n", "    " * i) for i in range(400)),
        "domain: \ud800",
    ],
    ids=["deep-flow-list", "deep-flow-map", "400-nested-descriptors", "lone-surrogate"],
)
def test_config_loader_refuses_pathological_yaml_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        config_from_texts([("fuzz.yaml", text)])


def test_the_fuzzed_server_is_alive_and_logged_no_traceback(
    service: ServiceProcess, stub: rls_pb2_grpc.RateLimitServiceStub, figures: Record
) -> None:
    """Runs last (file order): the process fuzzed above is still serving, and said nothing
    worse than a warning about any of it."""
    assert stub.ShouldRateLimit(request_of(entries=[("k", "after")]), timeout=30).statuses
    assert_alive_without_traceback(service)
    figures(answers=dict(sorted(SEEN.items())))
