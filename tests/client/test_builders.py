"""The ready-made descriptor builders, on requests made from ASGI scopes (no server needed)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from ratelimitd_client import AsyncRateLimitClient, InvalidRequest
from ratelimitd_client.starlette import (
    RateLimitMiddleware,
    build_descriptors,
    header,
    method,
    rate_limit,
    remote_address,
    route,
    route_template,
    state,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route as StarletteRoute

from tests.client.conftest import http


def make_request(
    peer: str | None = "203.0.113.7",
    headers: list[tuple[str, str]] | None = None,
    path: str = "/",
    http_method: str = "GET",
    app: Any = None,
) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": http_method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers or []],
        "client": (peer, 5555) if peer is not None else None,
        "state": {},
    }
    if app is not None:
        scope["app"] = app
    return Request(scope)


PROXIES = ["10.0.0.0/8", "192.0.2.1"]


# remote_address ----------------------------------------------------------------------------


def test_an_untrusted_peer_cannot_spoof_its_address_with_headers() -> None:
    build = remote_address(trusted_proxies=PROXIES)
    spoofed = make_request(
        "203.0.113.7", [("X-Forwarded-For", "1.1.1.1"), ("X-Real-IP", "2.2.2.2")]
    )
    assert build(spoofed) == ("remote_address", "203.0.113.7")


def test_without_trusted_proxies_the_socket_peer_is_always_used() -> None:
    request = make_request("10.0.0.1", [("X-Forwarded-For", "1.1.1.1")])
    assert remote_address()(request) == ("remote_address", "10.0.0.1")


def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() -> None:
    build = remote_address(trusted_proxies=PROXIES)
    # the client prepended 6.6.6.6 itself; the proxy appended what it saw: 1.2.3.4
    request = make_request("10.0.0.1", [("X-Forwarded-For", "6.6.6.6, 1.2.3.4")])
    assert build(request) == ("remote_address", "1.2.3.4")


def test_a_chain_of_trusted_proxies_is_skipped() -> None:
    build = remote_address(trusted_proxies=PROXIES)
    request = make_request(
        "10.0.0.1", [("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 192.0.2.1, 10.9.9.9")]
    )
    assert build(request).__getitem__(1) == "1.2.3.4"
    # several X-Forwarded-For headers are one list, in order
    split = make_request(
        "10.0.0.1", [("X-Forwarded-For", "6.6.6.6, 1.2.3.4"), ("X-Forwarded-For", "10.1.1.1")]
    )
    assert build(split)[1] == "1.2.3.4"
    # every hop trusted: the leftmost one
    internal = make_request("10.0.0.1", [("X-Forwarded-For", "10.2.2.2, 10.3.3.3")])
    assert build(internal)[1] == "10.2.2.2"


def test_x_real_ip_is_used_behind_a_trusted_proxy_without_x_forwarded_for() -> None:
    build = remote_address(trusted_proxies=PROXIES)
    assert build(make_request("10.0.0.1", [("X-Real-IP", "1.2.3.4")]))[1] == "1.2.3.4"
    assert build(make_request("10.0.0.1", [("X-Real-IP", "bogus")]))[1] == "10.0.0.1"
    assert build(make_request("10.0.0.1"))[1] == "10.0.0.1"


def test_garbage_in_x_forwarded_for_stops_the_walk_at_the_last_good_hop() -> None:
    build = remote_address(trusted_proxies=PROXIES)
    request = make_request("10.0.0.1", [("X-Forwarded-For", "1.2.3.4, not-an-ip, 10.5.5.5")])
    assert build(request)[1] == "10.5.5.5"


def test_addresses_with_ports_brackets_and_v4_mapped_forms_are_normalized() -> None:
    build = remote_address(trusted_proxies=PROXIES, ipv6_prefix=128)
    assert build(make_request("10.0.0.1", [("X-Forwarded-For", "1.2.3.4:5678")]))[1] == "1.2.3.4"
    bracketed = make_request("10.0.0.1", [("X-Forwarded-For", "[2001:db8::1]:443")])
    assert build(bracketed)[1] == "2001:db8::1"
    assert build(make_request("::ffff:203.0.113.7"))[1] == "203.0.113.7"
    assert build(make_request("::ffff:10.0.0.1", [("X-Real-IP", "1.2.3.4")]))[1] == "1.2.3.4"


def test_ipv6_clients_are_grouped_by_network() -> None:
    request = make_request("2001:db8:1:2:aaaa:bbbb:cccc:dddd")
    assert remote_address()(request)[1] == "2001:db8:1:2::/64"
    assert remote_address(ipv6_prefix=48)(request)[1] == "2001:db8:1::/48"
    assert remote_address(ipv6_prefix=128)(request)[1] == "2001:db8:1:2:aaaa:bbbb:cccc:dddd"
    with pytest.raises(InvalidRequest):
        remote_address(ipv6_prefix=0)


def test_a_request_without_a_socket_peer_is_named_for_what_there_is() -> None:
    assert remote_address()(make_request(None)) == ("remote_address", "unknown")
    assert remote_address(key="ip")(make_request("testclient")) == ("ip", "testclient")


# header, route, method, state --------------------------------------------------------------


def test_a_header_is_sent_as_a_hash_never_raw() -> None:
    request = make_request(headers=[("X-API-Key", "sk_live_secret")])
    key, value = header("X-API-Key")(request) or ("", "")
    assert key == "x_api_key"
    assert "sk_live_secret" not in value and len(value) == 32
    assert value == hashlib.sha256(b"sk_live_secret").hexdigest()[:32]
    keyed = header("X-API-Key", key="api_key", secret="pepper")(request)
    assert keyed is not None and keyed[0] == "api_key" and keyed[1] not in (value, "sk_live_secret")
    assert header("X-API-Key", secret="pepper")(request) == ("x_api_key", keyed[1])
    assert header("X-Tenant", hashed=False)(make_request(headers=[("X-Tenant", "acme")])) == (
        "x_tenant",
        "acme",
    )
    assert header("X-API-Key")(make_request()) is None
    assert header("X-API-Key")(make_request(headers=[("X-API-Key", "")])) is None


async def _endpoint(request: Request) -> JSONResponse:
    return JSONResponse({"route": route()(request)})  # after routing, under a Mount


def fastapi_app() -> FastAPI:
    app = FastAPI()
    items = APIRouter(prefix="/v1")

    @items.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @items.post("/items")
    async def create() -> dict[str, str]:
        return {}

    app.include_router(items)
    outer, inner = APIRouter(prefix="/api"), APIRouter(prefix="/v2")

    @inner.get("/things/{thing_id}")
    async def thing(thing_id: str, request: Request) -> dict[str, Any]:
        return {"route": route()(request)}  # after routing, as in a dependency

    outer.include_router(inner)
    app.include_router(outer)
    sub = Starlette(routes=[StarletteRoute("/users/{name}", _endpoint)])
    app.mount("/admin", sub)
    app.mount("/static", PlainTextResponse("static"))
    return app


@pytest.mark.parametrize(
    ("path", "http_method", "template"),
    [
        ("/v1/items/42", "GET", "/v1/items/{item_id}"),
        ("/v1/items", "POST", "/v1/items"),
        ("/v1/items", "GET", "/v1/items"),  # a 405: the route still names it
        ("/api/v2/things/x", "GET", "/api/v2/things/{thing_id}"),
        ("/admin/users/bob", "GET", "/admin/users/{name}"),
        ("/admin/nothing", "GET", None),
        ("/static/css/site.css", "GET", "/static/{path}"),
        ("/nowhere", "GET", None),
    ],
)
def test_the_route_is_its_path_template(path: str, http_method: str, template: str | None) -> None:
    request = make_request(path=path, http_method=http_method, app=fastapi_app())
    assert route_template(request.scope) == template
    assert route()(request) == (None if template is None else ("route", template))


async def test_after_routing_the_route_is_the_one_that_took_the_request() -> None:
    async with http(fastapi_app()) as browser:
        nested = await browser.get("/api/v2/things/x")
        mounted = await browser.get("/admin/users/bob")
    assert nested.json() == {"route": ["route", "/api/v2/things/{thing_id}"]}
    assert mounted.json() == {"route": ["route", "/admin/users/{name}"]}


def test_method_and_state() -> None:
    request = make_request(http_method="PATCH")
    assert method()(request) == ("method", "PATCH")
    assert state("user_id")(request) is None
    request.state.user_id = 42
    request.state.tier = None
    assert state("user_id")(request) == ("user_id", "42")
    assert state("user_id", key="user")(request) == ("user", "42")
    assert state("tier")(request) is None


# Rules -------------------------------------------------------------------------------------


async def test_a_rule_is_left_out_when_one_of_its_builders_has_no_value() -> None:
    request = make_request(headers=[("X-API-Key", "k")])
    rules = [
        [("plan", "small"), remote_address()],
        [header("X-API-Key", key="api_key"), state("user")],  # no user: left out
        [header("X-API-Key", key="api_key")],
    ]
    assert await build_descriptors(rules, request) == [
        [("plan", "small"), ("remote_address", "203.0.113.7")],
        [("api_key", hashlib.sha256(b"k").hexdigest()[:32])],
    ]


async def test_a_function_can_build_the_descriptors_sync_or_async() -> None:
    request = make_request()

    def sync(request: Request) -> list[dict[str, str]]:
        return [{"ip": request.client.host if request.client else ""}]

    async def asynchronous(request: Request) -> list[dict[str, str]]:
        return [{"path": request.url.path}]

    assert await build_descriptors(sync, request) == [{"ip": "203.0.113.7"}]
    assert await build_descriptors(asynchronous, request) == [{"path": "/"}]


@pytest.mark.parametrize(
    "descriptors",
    ["route", [["route"]], [[]], [[("k", "v", "w")]], [[("k", 1)]], [[42]], {"k": "v"}],
)
def test_bad_rules_are_refused_when_the_app_is_built(descriptors: Any) -> None:
    client = AsyncRateLimitClient()
    with pytest.raises(InvalidRequest):
        RateLimitMiddleware(_endpoint, client=client, domain="web", descriptors=descriptors)
    with pytest.raises(InvalidRequest):
        rate_limit(client, "web", descriptors)


def test_a_bad_domain_or_hits_is_refused_when_the_app_is_built() -> None:
    client = AsyncRateLimitClient()
    with pytest.raises(InvalidRequest):
        RateLimitMiddleware(_endpoint, client=client, domain="", descriptors=[[method()]])
    with pytest.raises(InvalidRequest):
        rate_limit(client, "web", [[method()]], hits=-1)
