"""The middleware and the dependency in real FastAPI/Starlette apps against a real ratelimitd."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from ratelimitd_client import AsyncRateLimitClient, Decision
from ratelimitd_client.starlette import (
    DescriptorSource,
    RateLimitExceeded,
    RateLimitMiddleware,
    header,
    method,
    rate_limit,
    rate_limit_exceeded_handler,
    remote_address,
    route,
    state,
)
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from tests.client.conftest import RULES, TOKEN, http, target
from tests.integration.conftest import StartServer

MakeAsync = Callable[..., AsyncRateLimitClient]
TRUSTED = ["10.0.0.0/8"]


@pytest.fixture
async def server(start_server: StartServer) -> Any:
    return await start_server(RULES, admin_token=TOKEN)


def web_app(
    client: AsyncRateLimitClient,
    descriptors: DescriptorSource,
    calls: list[str] | None = None,
    **options: Any,
) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        RateLimitMiddleware, client=client, domain="web", descriptors=descriptors, **options
    )
    seen = calls if calls is not None else []

    @app.get("/items/{item_id}")
    async def read(item_id: int) -> dict[str, int]:
        seen.append(f"GET {item_id}")
        return {"id": item_id}

    @app.post("/items/{item_id}")
    async def write(item_id: int) -> dict[str, int]:
        seen.append(f"POST {item_id}")
        return {"id": item_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/static/{name}")
    async def static(name: str) -> PlainTextResponse:
        return PlainTextResponse(name)

    return app


def rate_limit_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("ratelimit-")}


async def test_allowed_responses_carry_the_headers_and_a_denial_is_a_json_429(
    server: Any, async_client: MakeAsync
) -> None:
    calls: list[str] = []
    app = web_app(async_client(target(server)), [[remote_address()]], calls)
    async with http(app, peer=("198.51.100.10", 1234)) as browser:
        allowed = [await browser.get(f"/items/{n}") for n in range(3)]
        denied = await browser.get("/items/9")
        missing = await browser.get("/nothing-here")
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    for response in allowed:
        assert response.headers["RateLimit-Limit"] == "3"
        assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60
        assert "Retry-After" not in response.headers
    assert denied.status_code == 429
    retry_after = int(denied.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert denied.json() == {"error": "rate_limited", "retry_after": retry_after}
    assert denied.headers["content-type"] == "application/json"
    assert rate_limit_headers(denied) == {
        "ratelimit-limit": "3",
        "ratelimit-remaining": "0",
        "ratelimit-reset": str(retry_after),
    }
    assert calls == ["GET 0", "GET 1", "GET 2"]  # the app never saw the denied request
    assert missing.status_code == 429  # every path is checked, a 404 too


async def test_headers_go_on_error_responses_too(server: Any, async_client: MakeAsync) -> None:
    app = web_app(async_client(target(server)), [[remote_address()]])
    async with http(app, peer=("198.51.100.11", 1234)) as browser:
        not_found = await browser.get("/nothing-here")
        invalid = await browser.get("/items/not-a-number")
    assert not_found.status_code == 404 and not_found.headers["RateLimit-Remaining"] == "2"
    assert invalid.status_code == 422 and invalid.headers["RateLimit-Remaining"] == "1"


async def test_excluded_paths_are_not_built_hashed_or_sent(
    async_client: MakeAsync, closed_port: int
) -> None:
    built: list[str] = []

    def descriptors(request: Request) -> list[list[tuple[str, str]]]:
        built.append(request.url.path)
        return [[("remote_address", "x")]]

    # a client that would deny anything it is asked: any check shows as a 429
    refusing = async_client(f"127.0.0.1:{closed_port}", failure_mode="deny", timeout=0.05)
    app = web_app(refusing, descriptors, exclude=["/health", "/static/*"])
    async with http(app) as browser:
        health = await browser.get("/health")
        static = await browser.get("/static/site.css")
        checked = await browser.get("/items/1")
    assert (health.status_code, static.status_code) == (200, 200)
    assert rate_limit_headers(health) == {} and "retry-after" not in health.headers
    assert built == ["/items/1"]
    assert checked.status_code == 429


async def drive(app: ASGIApp, scope: Scope, incoming: list[Message]) -> list[Message]:
    """Runs one ASGI connection: feeds `incoming`, returns what the app sent."""
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in incoming:
        queue.put_nowait(message)
    sent: list[Message] = []

    async def receive() -> Message:
        return await queue.get()

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def test_websocket_and_lifespan_pass_through(closed_port: int) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    # a client that would deny anything it is asked
    refusing = AsyncRateLimitClient(f"127.0.0.1:{closed_port}", failure_mode="deny")
    app = Starlette(routes=[Route("/page", page), WebSocketRoute("/ws", echo)], lifespan=lifespan)
    app.add_middleware(
        RateLimitMiddleware, client=refusing, domain="web", descriptors=[[remote_address()]]
    )
    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    sent = await drive(
        app, lifespan_scope, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["startup", "shutdown"]
    websocket_scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("203.0.113.1", 5000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "state": {},
    }
    sent = await drive(
        app,
        websocket_scope,
        [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hello"}],
    )
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hello"
    async with http(app) as browser:
        assert (await browser.get("/page")).status_code == 429  # HTTP is checked


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server), admin_token=TOKEN)
    app = web_app(client, [[remote_address(trusted_proxies=TRUSTED)]])
    async with http(app, peer=("203.0.113.9", 4444)) as attacker:
        codes = [
            (
                await attacker.get("/items/1", headers={"X-Forwarded-For": f"192.0.2.{n}"})
            ).status_code
            for n in range(4)
        ] + [(await attacker.get("/items/1", headers={"X-Real-IP": "192.0.2.99"})).status_code]
    assert codes == [200, 200, 200, 429, 429]
    [counted] = await client.peek("web", [{"remote_address": "203.0.113.9"}])
    assert counted.over_limit
    assert (await client.peek("web", [{"remote_address": "192.0.2.0"}]))[0].remaining == 3


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(
    server: Any, async_client: MakeAsync
) -> None:
    app = web_app(async_client(target(server)), [[remote_address(trusted_proxies=TRUSTED)]])
    async with http(app, peer=("10.1.2.3", 4444)) as proxy:

        async def get(forwarded_for: str) -> int:
            response = await proxy.get("/items/1", headers={"X-Forwarded-For": forwarded_for})
            return response.status_code

        first = [await get("198.51.100.1") for _ in range(3)]
        assert first == [200, 200, 200]
        assert await get("198.51.100.1") == 429
        # the client prepends another address: the proxy appended the real one last
        assert await get("198.51.100.3, 198.51.100.1") == 429
        assert await get("198.51.100.2") == 200  # another client, its own counter
        assert await get("198.51.100.1, 10.9.9.9") == 429  # through two trusted proxies


async def test_a_header_value_is_counted_by_its_hash_and_never_sent_raw(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server), admin_token=TOKEN)
    app = web_app(client, [[header("X-API-Key", key="api_key")]])
    async with http(app) as browser:
        keyed = await browser.get("/items/1", headers={"X-API-Key": "sk_test_123"})
        anonymous = await browser.get("/items/1")
    assert keyed.headers["RateLimit-Remaining"] == "4"
    assert rate_limit_headers(anonymous) == {}  # no key: the rule is left out, nothing checked
    digest = hashlib.sha256(b"sk_test_123").hexdigest()[:32]
    assert (await client.peek("web", [{"api_key": digest}]))[0].remaining == 4
    assert (await client.peek("web", [{"api_key": "sk_test_123"}]))[0].remaining == 5


async def test_route_templates_and_methods_name_the_counters(
    server: Any, async_client: MakeAsync
) -> None:
    app = web_app(async_client(target(server)), [[route(), method()]])
    async with http(app) as browser:
        gets = [(await browser.get(f"/items/{n}")).status_code for n in (1, 2, 3)]
        post = await browser.post("/items/1")
        unrouted = await browser.get("/nowhere")
    assert gets == [200, 200, 429]  # /items/{item_id} is one route, whatever the id
    assert post.status_code == 200 and post.headers["RateLimit-Remaining"] == "1"
    assert unrouted.status_code == 404 and rate_limit_headers(unrouted) == {}


class UserFromHeader:
    """Stands in for an app's authentication middleware: sets request.state.user."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            user = dict(scope["headers"]).get(b"x-user")
            if user:
                scope.setdefault("state", {})["user"] = user.decode()
        await self.app(scope, receive, send)


async def test_a_value_the_app_put_on_request_state(server: Any, async_client: MakeAsync) -> None:
    app = web_app(async_client(target(server)), [[state("user")]])
    app.add_middleware(UserFromHeader)  # added last: runs first
    async with http(app) as browser:
        alice = [
            (await browser.get("/items/1", headers={"X-User": "alice"})).status_code
            for _ in range(3)
        ]
        bob = await browser.get("/items/1", headers={"X-User": "bob"})
        nobody = await browser.get("/items/1")
    assert alice == [200, 200, 429]
    assert bob.status_code == 200 and bob.headers["RateLimit-Remaining"] == "1"
    assert nobody.status_code == 200 and rate_limit_headers(nobody) == {}


async def test_a_descriptor_function_may_return_nothing_to_check(
    server: Any, async_client: MakeAsync
) -> None:
    async def only_writes(request: Request) -> list[dict[str, str]]:
        return [{"plan": "small"}] if request.method == "POST" else []

    app = web_app(async_client(target(server)), only_writes)
    async with http(app) as browser:
        reads = [(await browser.get("/items/1")).status_code for _ in range(3)]
        writes = [(await browser.post("/items/1")).status_code for _ in range(2)]
    assert reads == [200, 200, 200] and writes == [200, 429]


async def test_the_dependency_and_the_middleware_together_show_the_tightest_limit_once(
    server: Any, async_client: MakeAsync
) -> None:
    client = async_client(target(server))
    app = FastAPI()
    app.add_middleware(
        RateLimitMiddleware, client=client, domain="web", descriptors=[[("plan", "large")]]
    )
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)
    small = rate_limit(client, "web", [[("plan", "small")]])

    @app.post("/export", dependencies=[Depends(small)])
    async def export() -> dict[str, str]:
        return {"status": "started"}

    @app.get("/list")
    async def listing() -> dict[str, str]:
        return {}

    async with http(app) as browser:
        first = await browser.post("/export")
        second = await browser.post("/export")
        other = await browser.get("/list")
    assert first.status_code == 200
    assert [first.headers.get_list(h) for h in ("RateLimit-Limit", "RateLimit-Remaining")] == [
        ["1"],
        ["0"],
    ]
    assert second.status_code == 429
    assert second.json() == {
        "error": "rate_limited",
        "retry_after": int(second.headers["Retry-After"]),
    }
    assert second.headers.get_list("Retry-After") == [second.headers["Retry-After"]]
    assert second.headers.get_list("RateLimit-Limit") == ["1"]
    assert other.headers["RateLimit-Limit"] == "50"  # only the middleware's limit here


async def test_the_dependency_alone(server: Any, async_client: MakeAsync) -> None:
    client = async_client(target(server))
    app = FastAPI()  # no middleware, no exception handler

    small = rate_limit(client, "web", [[("plan", "small")]])

    @app.post("/export")
    async def export(decision: Decision = Depends(small)) -> dict[str, Any]:  # noqa: B008
        return {"remaining": decision.remaining}

    async with http(app) as browser:
        first = await browser.post("/export")
        second = await browser.post("/export")
    assert first.json() == {"remaining": 0}
    assert first.headers["RateLimit-Limit"] == "1" and first.headers["RateLimit-Remaining"] == "0"
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    assert second.headers["RateLimit-Remaining"] == "0"
    assert second.json() == {"detail": "rate_limited"}  # FastAPI's own body without the handler


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_the_failure_mode_in_the_middleware(
    async_client: MakeAsync, closed_port: int, mode: str
) -> None:
    calls: list[str] = []
    unreachable = async_client(f"127.0.0.1:{closed_port}", failure_mode=mode, timeout=0.05)
    app = web_app(unreachable, [[remote_address()]], calls)
    async with http(app) as browser:
        started = time.monotonic()
        response = await browser.get("/items/1")
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    if mode == "allow":
        assert response.status_code == 200 and calls == ["GET 1"]
        assert rate_limit_headers(response) == {} and "retry-after" not in response.headers
    else:
        assert response.status_code == 429 and calls == []
        assert response.json() == {"error": "rate_limited", "retry_after": 1}
        assert response.headers["Retry-After"] == "1"
