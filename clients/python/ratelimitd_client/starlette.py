"""Starlette and FastAPI integration: a middleware, a per-route dependency, descriptor builders.

    ip = remote_address(trusted_proxies=["10.0.0.0/8"])
    app.add_middleware(RateLimitMiddleware, client=client, domain="web", descriptors=[[ip]])
    login_limit = rate_limit(client, "web", [[("route", "login"), ip]])  # Depends(login_limit)

A denial is a 429 with `{"error": "rate_limited", "retry_after": N}`, `Retry-After` and the
`RateLimit-Limit`/`-Remaining`/`-Reset` headers, which allowed responses carry too. Needs the
`starlette` extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ratelimitd_client._async import AsyncRateLimitClient
from ratelimitd_client._builders import (
    DescriptorSource,
    EntryBuilder,
    Header,
    Method,
    RemoteAddress,
    Route,
    Rule,
    State,
    build_descriptors,
    check_source,
    header,
    method,
    remote_address,
    route,
    route_template,
    state,
)
from ratelimitd_client._core import (
    Decision,
    DescriptorLike,
    RateLimitError,
    ServiceUnavailable,
    check_arguments,
    failure_decision,
    most_restrictive,
)
from ratelimitd_client._reservations import Reservation

__all__ = [
    "DECISIONS_KEY",
    "DescriptorSource",
    "EntryBuilder",
    "Header",
    "Method",
    "RateLimitExceeded",
    "RateLimitHeadersMiddleware",
    "RateLimitMiddleware",
    "RemoteAddress",
    "Route",
    "Rule",
    "State",
    "build_descriptors",
    "denial_response",
    "header",
    "in_flight_denial",
    "method",
    "rate_limit",
    "rate_limit_exceeded_handler",
    "remote_address",
    "route",
    "route_template",
    "settle_stream",
    "state",
]

DECISIONS_KEY = "ratelimitd_client.decisions"
"""The scope key under which every decision taken for a request is kept, in order."""


# Responses ---------------------------------------------------------------------------------


def denial_response(decision: Decision) -> Response:
    """429 with `{"error": "rate_limited", "retry_after": N}` and the rate-limit headers."""
    return JSONResponse(
        {"error": "rate_limited", "retry_after": decision.retry_after},
        status_code=429,
        headers=decision.headers(),
    )


def in_flight_denial() -> Response:
    """429 for a request with no place left among its key's `max_in_flight`."""
    return JSONResponse(
        {"error": "too_many_in_flight", "retry_after": 1},
        status_code=429,
        headers={"Retry-After": "1"},
    )


class RateLimitExceeded(HTTPException):
    """Raised by the `rate_limit` dependency. Register `rate_limit_exceeded_handler` for the
    JSON body above; without it the framework's own HTTPException body is used, with the same
    status and headers."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(status_code=429, detail="rate_limited", headers=decision.headers())
        self.decision = decision


Chunk = TypeVar("Chunk")


def settle_stream(
    client: AsyncRateLimitClient,
    reservation: Reservation,
    body: AsyncIterable[Chunk],
    cost: Callable[[Chunk], int] = lambda chunk: 1,
) -> AsyncIterator[Chunk]:
    """`body`'s chunks, for a `StreamingResponse`; when the stream ends, or the client goes
    away, the reservation is committed at the summed `cost` of the chunks sent (one per chunk
    by default: a token per chunk). `StreamingResponse(settle_stream(client, r, tokens()))`.
    """

    async def stream() -> AsyncIterator[Chunk]:
        used = 0
        try:
            async for chunk in body:
                used += cost(chunk)
                yield chunk
        finally:
            if reservation.allowed:
                await client.commit(reservation, used)

    return stream()


def rate_limit_exceeded_handler(request: Request, exc: Exception) -> Response:
    """`app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)`."""
    if not isinstance(exc, RateLimitExceeded):
        raise exc
    return denial_response(exc.decision)


def record_decision(scope: Scope, decision: Decision) -> None:
    scope.setdefault(DECISIONS_KEY, []).append(decision)


def _with_headers(raw: Iterable[tuple[bytes, bytes]], headers: dict[str, str]) -> list[Any]:
    names = {name.lower().encode("latin-1") for name in headers}
    kept = [(name, value) for name, value in raw if name.lower() not in names]
    kept.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    )
    return kept


def _stamping(scope: Scope, send: Send) -> Send:
    """Puts the headers of the most restrictive decision taken for this request (by the
    middleware or by dependencies) on the response, replacing any earlier copies."""

    async def stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            decision = most_restrictive(scope.get(DECISIONS_KEY, ()))
            headers = decision.headers() if decision is not None else {}
            if headers:
                message = {**message, "headers": _with_headers(message.get("headers", ()), headers)}
        await send(message)

    return stamped


# Middleware and dependency -----------------------------------------------------------------


class RateLimitHeadersMiddleware:
    """Only puts the headers of decisions taken by `rate_limit` dependencies on every response,
    including error responses and responses the endpoint built itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _stamping(scope, send))


class RateLimitMiddleware:
    """Checks every HTTP request before the app sees it.

    `descriptors` is a function of the request returning the descriptors (sync or async), or a
    list of rules, each a list of builders and literal (key, value) entries; a rule is left out
    when one of its builders has no value, and a request with no descriptors is not checked.
    Paths in `exclude` (exact, or a prefix when ending in `*`) are passed through untouched:
    nothing is built, hashed or sent. WebSocket and lifespan traffic is passed through.

    With `concurrency=True` the request also takes a lease on the same descriptors (their
    rules' `algorithm: concurrency`) and holds it for the life of the response, to the last
    chunk of a streaming one, or until the client goes away; it is released then, and ends by
    its TTL if the release cannot be sent. A request with no place left is answered 429 with
    `{"error": "too_many_in_flight", "retry_after": 1}`: a place frees when a request in
    flight ends, which no one can tell in advance. When ratelimitd cannot be reached, the
    client's failure mode decides, as for checks.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncRateLimitClient,
        domain: str,
        descriptors: DescriptorSource,
        hits: int = 1,
        exclude: Iterable[str] = (),
        concurrency: bool = False,
    ) -> None:
        check_arguments(domain, hits)
        check_source(descriptors)
        self.app = app
        self.client = client
        self.domain = domain
        self.descriptors = descriptors
        self.hits = hits
        self.concurrency = concurrency
        patterns = list(exclude)
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def excluded(self, path: str) -> bool:
        return path in self._exact or path.startswith(self._prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        descriptors = await build_descriptors(self.descriptors, Request(scope))
        if descriptors:
            decision = await self.client.check(self.domain, descriptors, self.hits)
            record_decision(scope, decision)
            if not decision.allowed:
                await denial_response(decision)(scope, receive, send)
                return
            if self.concurrency:
                await self._with_lease(descriptors, scope, receive, send)
                return
        await self.app(scope, receive, _stamping(scope, send))

    async def _with_lease(
        self, descriptors: list[DescriptorLike], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Runs the app holding a lease on `descriptors`, released when the response ends."""
        try:
            lease = await self.client.acquire(self.domain, descriptors)
        except ServiceUnavailable as error:
            failed = failure_decision(self.client.options, error)
            if not failed.allowed:
                await denial_response(failed)(scope, receive, send)
                return
            await self.app(scope, receive, _stamping(scope, send))
            return
        if not lease.allowed:
            await in_flight_denial()(scope, receive, send)
            return
        try:
            await self.app(scope, receive, _stamping(scope, send))
        finally:
            with contextlib.suppress(RateLimitError):  # it ends by its TTL then
                await self.client.release(lease)


def rate_limit(
    client: AsyncRateLimitClient,
    domain: str,
    descriptors: DescriptorSource,
    *,
    hits: int = 1,
) -> Callable[[Request, Response], Awaitable[Decision]]:
    """A FastAPI dependency for per-route limits: `Depends(rate_limit(client, "web", rules))`.

    It returns the Decision, raises `RateLimitExceeded` (429) on a denial, and sets the
    rate-limit headers on the response (on every response, error responses too, with
    `RateLimitHeadersMiddleware` or `RateLimitMiddleware` installed).
    """
    check_arguments(domain, hits)
    check_source(descriptors)

    async def check_rate_limit(request: Request, response: Response) -> Decision:
        built = await build_descriptors(descriptors, request)
        if not built:
            return Decision(allowed=True)
        decision = await client.check(domain, built, hits)
        record_decision(request.scope, decision)
        if not decision.allowed:
            raise RateLimitExceeded(decision)
        for name, value in decision.headers().items():
            response.headers[name] = value
        return decision

    return check_rate_limit
