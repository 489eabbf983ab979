"""Isolation: no crafted value reaches another tenant's counter, /metrics cannot be blown up,
the admin API wants its token.

- `keys.identity()` is injective: it has a left inverse on its plain form (decoded below,
  for every input hypothesis and an exhaustive search over the separators can find), hashed
  identities cannot meet plain ones, and the Cluster hash tag is exactly the identity;
- on real Redis and on a real Cluster, crafted tenants' descriptors, sent together, each get
  their own counter;
- 100,000 distinct values of a `detailed_metric` rule leave at most
  RATELIMITD_DETAILED_METRIC_MAX_VALUES + 1 series in /metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimitd.config import config_from_texts
from ratelimitd.keys import MAX_PLAIN_IDENTITY, counter_base, identity
from tests.reliability.conftest import Record, Serve
from tests.reliability.harness import rl_request
from tests.servers.redis import RedisCluster, RedisServer
from tests.servers.service import ServiceProcess

Entries = tuple[tuple[str, str], ...]
SEPARATORS = "%|={}"
CONTROL = "".join(map(chr, range(32))) + "\x7f"
# characters that an escaping scheme could confuse: its own separators and escape digits,
# control characters, and a few that are not ASCII at all
ADVERSARIAL = SEPARATORS + "%7C3D7B7D25" + CONTROL + "é\u2028\U0001f600:* "


def _unescape(part: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), part)


def decode(plain: str) -> tuple[str, Entries]:
    """The inverse of a plain identity: `domain|key=value|...` with %XX escapes."""
    domain, *pairs = plain.split("|")
    entries = []
    for pair in pairs:
        key, value = pair.split("=")  # exactly one `=`: any other is escaped
        entries.append((_unescape(key), _unescape(value)))
    return _unescape(domain), tuple(entries)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: between the first `{` and the next `}`."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start + 1)]


adversarial_text = st.one_of(
    st.text(alphabet=ADVERSARIAL, max_size=12),
    st.text(max_size=12),
    # long values around the hashing threshold
    st.builds(
        lambda char, n: char * n,
        st.sampled_from(ADVERSARIAL),
        st.integers(MAX_PLAIN_IDENTITY - 20, MAX_PLAIN_IDENTITY + 20),
    ),
)
descriptors = st.tuples(
    st.text(alphabet=ADVERSARIAL, max_size=8),
    st.lists(st.tuples(adversarial_text, adversarial_text), min_size=1, max_size=4).map(tuple),
)


@settings(max_examples=1000, deadline=None)
@given(descriptor=descriptors)
def test_a_plain_identity_decodes_back_to_its_descriptor(descriptor: tuple[str, Entries]) -> None:
    domain, entries = descriptor
    made = identity(domain, entries)
    if made.startswith("sha256="):
        assert "|" not in made and len(made) == len("sha256=") + 64
        return
    assert "|" in made and len(made) <= MAX_PLAIN_IDENTITY
    assert decode(made) == (domain, entries)
    assert not set(made) & set("{}" + CONTROL)  # nothing that could end a hash tag or a line
    assert hash_tag(counter_base("prefix:{x}", domain, entries)[len("prefix:{x}") :]) == made


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(descriptors, min_size=2, max_size=30, unique=True))
def test_distinct_descriptors_get_distinct_identities(batch: list[tuple[str, Entries]]) -> None:
    made = {identity(domain, entries) for domain, entries in batch}
    assert len(made) == len(batch)


def test_every_short_descriptor_over_the_separators_has_its_own_identity() -> None:
    """Exhaustive: every domain, key and value of up to two characters drawn from the
    separators, an escape's own characters and a control character."""
    alphabet = "%|={}7C\x00"
    words = [""] + ["".join(w) for n in (1, 2) for w in itertools.product(alphabet, repeat=n)]
    seen: dict[str, tuple[str, Entries]] = {}
    domains = ["", "d", "d|k=v", "%7C"]
    count = 0
    for domain in domains:
        for key, value in itertools.product(words, repeat=2):
            descriptor: tuple[str, Entries] = (domain, ((key, value),))
            made = identity(*descriptor)
            assert seen.setdefault(made, descriptor) == descriptor, (made, descriptor)
            count += 1
    singles = ["", *alphabet]
    for domain in domains:
        for k1, v1, k2, v2 in itertools.product(singles, repeat=4):
            descriptor = (domain, ((k1, v1), (k2, v2)))
            made = identity(*descriptor)
            assert seen.setdefault(made, descriptor) == descriptor, (made, descriptor)
            count += 1
    assert count == len(seen) == 4 * 73**2 + 4 * 9**4  # 47,560 descriptors, as many identities


# --------------------------------------------------------------------------------------- #
# On real Redis: crafted tenants never share a counter
# --------------------------------------------------------------------------------------- #

TENANT_DOMAINS = ["acme", "acme|tenant=evil", "acme%7Ctenant%3Devil", "{acme}"]
TENANT_RULES = "\n---\n".join(
    textwrap.dedent(
        f"""\
        domain: "{domain}"
        descriptors:
          - key: run
            descriptors:
              - key: tenant
                descriptors:
                  - key: user
                    rate_limit: {{unit: year, requests_per_unit: 1}}
        """
    )
    for domain in TENANT_DOMAINS
)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def tenant_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[rls_pb2_grpc.RateLimitServiceStub]:
    rules = tmp_path_factory.mktemp("tenants") / "rules.yaml"
    rules.write_text(TENANT_RULES, encoding="utf-8")
    store: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server_session" if request.param == "redis" else "redis_cluster"
    )
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": store.url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "5000",
        "RATELIMITD_KEY_PREFIX": f"tenants-{RUN_ID}:",
    }
    with (
        ServiceProcess(rules, env) as service,
        grpc.insecure_channel(service.target) as channel,
    ):
        yield rls_pb2_grpc.RateLimitServiceStub(channel)


RUNS = itertools.count()
RUN_ID = uuid.uuid4().hex[:8]
tenants = st.lists(
    st.tuples(
        st.sampled_from(TENANT_DOMAINS),
        st.text(alphabet=ADVERSARIAL, max_size=10),
        st.one_of(
            st.text(alphabet=ADVERSARIAL, max_size=10),
            st.builds(lambda c, n: c * n, st.sampled_from(ADVERSARIAL), st.integers(200, 300)),
        ),
    ),
    min_size=2,
    max_size=40,
    unique=True,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=tenants)
def test_crafted_tenants_never_share_a_counter(
    batch: list[tuple[str, str, str]], tenant_service: rls_pb2_grpc.RateLimitServiceStub
) -> None:
    """Every (tenant, user) has a limit of one per year. Sent together, each gets its own
    counter: all admitted once, all denied the second time. Two that shared a counter would
    show as a denial in the first round."""
    run = f"{RUN_ID}-{next(RUNS)}"
    for round_, expected in (
        (1, rls_pb2.RateLimitResponse.OK),
        (2, rls_pb2.RateLimitResponse.OVER_LIMIT),
    ):
        by_domain: dict[str, list[tuple[str, str]]] = {}
        for domain, tenant, user in batch:
            by_domain.setdefault(domain, []).append((tenant, user))
        for domain, pairs in by_domain.items():
            request = rl_request(
                domain, *[[("run", run), ("tenant", t), ("user", u)] for t, u in pairs]
            )
            reply = tenant_service.ShouldRateLimit(request, timeout=30)
            codes = [status.code for status in reply.statuses]
            assert codes == [expected] * len(pairs), (round_, domain, pairs, codes)


# --------------------------------------------------------------------------------------- #
# /metrics cardinality
# --------------------------------------------------------------------------------------- #

METRIC_RULES = """
domain: metrics
descriptors:
  - key: user
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 5}
"""
DISTINCT_VALUES = 100_000


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return str(reply.read().decode())


def rule_series(text: str, rule_prefix: str) -> set[str]:
    return {
        match.group(1)
        for match in re.finditer(r'domain="metrics",rule="([^"]*)"', text)
        if match.group(1).startswith(rule_prefix)
    }


async def test_100000_distinct_values_cannot_blow_up_metrics(serve: Serve, figures: Record) -> None:
    service = await serve(METRIC_RULES)  # the default RATELIMITD_DETAILED_METRIC_MAX_VALUES: 100
    cap = service.app.settings.detailed_metric_max_values
    per_request = 255  # and one `ip` descriptor: 256, the most a request may carry

    def request(start: int) -> rls_pb2.RateLimitRequest:
        users = [[("user", f"u{n}")] for n in range(start, start + per_request)]
        return rl_request("metrics", *users, [("ip", f"10.0.{start % 65536}")])

    starts = list(range(0, DISTINCT_VALUES, per_request))
    for at in range(0, len(starts), 16):
        await asyncio.gather(
            *(service.stub.ShouldRateLimit(request(s), timeout=60) for s in starts[at : at + 16])
        )
    text = await asyncio.to_thread(metrics_text, service.app.http_port)
    user_series = rule_series(text, "user")
    ip_series = rule_series(text, "ip")
    figures(
        distinct_values=DISTINCT_VALUES,
        user_series=len(user_series),
        ip_series=len(ip_series),
        metrics_bytes=len(text),
    )
    assert len(user_series) == cap + 1  # the first `cap` values, then `user__other_`
    assert "user__other_" in user_series
    assert ip_series == {"ip"}  # a rule without detailed_metric never names a value
    assert len(text) < 1024 * 1024


async def test_long_detailed_values_cannot_blow_up_metrics_either(
    serve: Serve, figures: Record
) -> None:
    service = await serve(METRIC_RULES)
    for start in range(0, 1000, 50):
        await service.stub.ShouldRateLimit(
            rl_request(
                "metrics", *[[("user", f"{n:04d}" + "x" * 4092)] for n in range(start, start + 50)]
            ),
            timeout=60,
        )
    text = await asyncio.to_thread(metrics_text, service.app.http_port)
    figures(distinct_values=1000, value_length=4096, metrics_bytes=len(text))
    assert len(text) < 1024 * 1024, f"/metrics is {len(text)} bytes"


def test_tenant_rules_parse() -> None:
    config = config_from_texts([("rules.yaml", TENANT_RULES)])
    assert sorted(config.domains) == sorted(TENANT_DOMAINS)
    entries = (("run", "r"), ("tenant", "t"), ("user", "u"))
    assert all(config.match(domain, entries) is not None for domain in TENANT_DOMAINS)
