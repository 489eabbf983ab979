"""X-Forwarded-For spoofing through the client's Starlette middleware does not escape per-IP
limits: a real ratelimitd, a real Starlette app with `RateLimitMiddleware` and
`remote_address(trusted_proxies=...)`, driven through httpx's ASGI transport with a chosen
socket peer.

A client talking directly may send any X-Forwarded-For or X-Real-IP: it is counted as its
socket address. Behind trusted proxies, whatever it prepends to X-Forwarded-For is skipped:
it is counted as the address the first trusted proxy saw. An IPv6 client is counted by its
/64, so rotating addresses within it does not help either.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ratelimitd_client import AsyncRateLimitClient
from ratelimitd_client.starlette import RateLimitMiddleware, remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.reliability.conftest import Serve

LIMIT = 5
RULES = f"""
domain: web
descriptors:
  - key: remote_address
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
"""
TRUSTED = ["10.0.0.0/8", "fd00::/8"]
PROXY = "10.0.0.1"


def spoofs(seed: int, count: int) -> list[str]:
    """What an attacker might put in a forwarding header: other addresses, its neighbours,
    private and loopback addresses, trusted-looking ones, ports, brackets, garbage."""
    chance = random.Random(seed)
    pool: list[Callable[[], str]] = [
        lambda: f"198.51.100.{chance.randrange(256)}",
        lambda: f"203.0.113.{chance.randrange(256)}",
        lambda: f"10.{chance.randrange(256)}.0.1",  # looks like a trusted proxy
        lambda: "127.0.0.1",
        lambda: f"[2001:db8::{chance.randrange(65536):x}]:443",
        lambda: f"::ffff:192.0.2.{chance.randrange(256)}",
        lambda: f"192.0.2.{chance.randrange(256)}:8080",
        lambda: "unknown",
        lambda: "",
    ]
    return [
        ", ".join(chance.choice(pool)() for _ in range(chance.randrange(1, 4)))
        for _ in range(count)
    ]


def app_for(client: AsyncRateLimitClient) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(
        RateLimitMiddleware,
        client=client,
        domain="web",
        descriptors=[[remote_address(trusted_proxies=TRUSTED)]],
    )
    return app


Browser = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def browser(serve: Serve) -> AsyncIterator[Browser]:
    """`browser(peer)`: an HTTP client whose requests reach the app from socket address
    `peer`, the app asking a real ratelimitd."""
    service = await serve(RULES)
    # a generous timeout: this is about whose counter is charged, not about latency
    client = AsyncRateLimitClient(service.target, failure_mode="deny", timeout=10.0)
    app = app_for(client)
    made: list[httpx.AsyncClient] = []

    def make(peer: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        made.append(httpx.AsyncClient(transport=transport, base_url="http://app"))
        return made[-1]

    yield make
    for http in made:
        await http.aclose()
    await client.aclose()


async def statuses(http: httpx.AsyncClient, headers: list[dict[str, str]]) -> list[int]:
    return [(await http.get("/", headers=h)).status_code for h in headers]


async def test_a_direct_client_cannot_forward_its_way_out(browser: Browser) -> None:
    http = browser("203.0.113.7")
    headers = [{"X-Forwarded-For": s, "X-Real-IP": s.split(",")[0]} for s in spoofs(1, 30)]
    assert await statuses(http, headers) == [200] * LIMIT + [429] * (30 - LIMIT)


async def test_a_client_behind_a_trusted_proxy_cannot_prepend_its_way_out(
    browser: Browser,
) -> None:
    http = browser(PROXY)
    real = "198.51.100.9"
    # the proxy appends the address it saw; everything to its left came from the client
    headers = [{"X-Forwarded-For": f"{s}, {real}" if s else real} for s in spoofs(2, 30)]
    assert await statuses(http, headers) == [200] * LIMIT + [429] * (30 - LIMIT)


async def test_two_trusted_proxies_and_header_lines_of_its_own(browser: Browser) -> None:
    http = browser(PROXY)
    real = "198.51.100.10"
    codes = []
    for spoof in spoofs(3, 20):
        # the client sends its own X-Forwarded-For lines; the proxies append to the last
        response = await http.get(
            "/",
            headers=[
                ("X-Forwarded-For", spoof or "1.2.3.4"),
                ("X-Forwarded-For", f"{spoof or '5.6.7.8'}, {real}, 10.0.0.2"),
                ("X-Real-IP", "1.1.1.1"),
            ],
        )
        codes.append(response.status_code)
    assert codes == [200] * LIMIT + [429] * (20 - LIMIT)


async def test_rotating_ipv6_addresses_within_a_64_does_not_help(browser: Browser) -> None:
    codes = []
    for n in range(1, 16):
        http = browser(f"2001:db8:1:2::{n:x}")
        codes.append(
            (await http.get("/", headers={"X-Forwarded-For": f"2001:db8:9::{n}"})).status_code
        )
    assert codes == [200] * LIMIT + [429] * (15 - LIMIT)


async def test_other_clients_keep_their_own_allowance(browser: Browser) -> None:
    """The limit is per address: exhausting one leaves the next one untouched."""
    spoiled = browser("203.0.113.20")
    assert await statuses(spoiled, [{}] * (LIMIT + 1)) == [200] * LIMIT + [429]
    neighbour = browser("203.0.113.21")
    assert await statuses(neighbour, [{"X-Forwarded-For": "203.0.113.20"}]) == [200]


# The address the middleware derives, as a property over any header an attacker can send

header_values = st.one_of(
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
            st.ip_addresses(v=4).map(lambda a: f"{a}:80"),
            st.text(alphabet="0123456789abcdef:.[], ", max_size=20),
            st.sampled_from(["10.0.0.3", "fd00::1", "127.0.0.1", "unknown", ""]),
        ),
        max_size=5,
    ).map(", ".join),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


def trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is one of the trusted proxies (an IPv4-mapped one counts as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(network) for network in TRUSTED)


def request_from(peer: str, headers: list[tuple[str, str]]) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
            "client": (peer, 40000),
        }
    )


@settings(max_examples=500, deadline=None)
@given(
    forwarded=st.lists(header_values, max_size=3),
    real_ip=header_values,
    client=st.ip_addresses().filter(lambda a: not trusted(a)),
    behind_proxy=st.booleans(),
)
def test_the_counted_address_is_the_one_the_first_trusted_proxy_saw(
    forwarded: list[str],
    real_ip: str,
    client: ipaddress.IPv4Address | ipaddress.IPv6Address,
    behind_proxy: bool,
) -> None:
    builder = remote_address(trusted_proxies=TRUSTED)
    headers = [("X-Forwarded-For", line) for line in forwarded] + [("X-Real-IP", real_ip)]
    if behind_proxy:  # the proxy appends the client's address to the last line
        if headers and forwarded:
            headers[len(forwarded) - 1] = ("X-Forwarded-For", f"{forwarded[-1]}, {client}")
        else:
            headers.insert(0, ("X-Forwarded-For", str(client)))
        request = request_from(PROXY, headers)
    else:
        request = request_from(str(client), headers)
    expected = builder.value(request_from(str(client), []))  # what the client is, alone
    assert builder.value(request) == expected
