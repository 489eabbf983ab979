"""Descriptor builders: they make descriptor entries from a Starlette request.

Used by `RateLimitMiddleware` and `rate_limit` (import them from `ratelimitd_client.starlette`
or `ratelimitd_client.fastapi`).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias

from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from ratelimitd_client._core import DescriptorLike, Entry, InvalidRequest


class EntryBuilder(Protocol):
    """Makes one descriptor entry from a request, or None when it cannot (the descriptor is
    then left out, as Envoy leaves out a descriptor when one of its actions has no value)."""

    def __call__(self, request: Request, /) -> Entry | None: ...


Rule: TypeAlias = Sequence[EntryBuilder | Entry]
"""One descriptor: builders and literal (key, value) entries, in entry order."""
DescriptorFunction: TypeAlias = Callable[
    [Request], Sequence[DescriptorLike] | Awaitable[Sequence[DescriptorLike]]
]
DescriptorSource: TypeAlias = DescriptorFunction | Sequence[Rule]
"""Either a function of the request returning the descriptors, or a list of rules."""


# Descriptor builders -----------------------------------------------------------------------

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str | None) -> IPAddress | None:
    """An address from a socket peer or a forwarding header, tolerating a port and brackets."""
    if not text:
        return None
    text = text.strip()
    candidates = [text]
    if text.startswith("[") and "]" in text:  # [v6]:port
        candidates.append(text[1 : text.index("]")])
    elif text.count(":") == 1:  # v4:port
        candidates.append(text.partition(":")[0])
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address
    return None


class RemoteAddress:
    """The client's address, key `remote_address` by default.

    The socket peer, unless the peer is one of `trusted_proxies` (addresses or CIDR networks):
    then `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first
    address that is not one is the client (so a client cannot prepend its way out); without
    `X-Forwarded-For`, `X-Real-IP`. Headers from any other peer are ignored. IPv6 clients are
    grouped by their /`ipv6_prefix` network (64: one subscriber's usual allocation; 128: each
    address on its own).
    """

    def __init__(
        self,
        key: str = "remote_address",
        *,
        trusted_proxies: Iterable[str | IPNetwork] = (),
        ipv6_prefix: int = 64,
    ) -> None:
        if not 0 < ipv6_prefix <= 128:
            raise InvalidRequest(f"ipv6_prefix must be from 1 to 128, not {ipv6_prefix}")
        self.key = key
        self.ipv6_prefix = ipv6_prefix
        self.trusted_proxies: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies
        )

    def _trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted_proxies)

    def client_address(self, request: Request) -> IPAddress | None:
        """The client's address as seen through trusted proxies; None without a socket peer."""
        peer = _parse_ip(request.client.host if request.client else None)
        if peer is None or not self._trusted(peer):
            return peer
        hops = [
            hop.strip()
            for line in request.headers.getlist("x-forwarded-for")
            for hop in line.split(",")
            if hop.strip()
        ]
        if not hops:
            return _parse_ip(request.headers.get("x-real-ip")) or peer
        client = peer
        for hop in reversed(hops):
            address = _parse_ip(hop)
            if address is None:  # garbage: nothing to its left can be trusted
                break
            client = address
            if not self._trusted(address):
                break
        return client

    def value(self, request: Request) -> str:
        address = self.client_address(request)
        if address is None:  # no socket peer (a Unix socket): name what there is
            return request.client.host if request.client and request.client.host else "unknown"
        if isinstance(address, ipaddress.IPv6Address) and self.ipv6_prefix < 128:
            network = ipaddress.ip_network(f"{address}/{self.ipv6_prefix}", strict=False)
            return str(network)
        return str(address)

    def __call__(self, request: Request, /) -> Entry:
        return (self.key, self.value(request))


class Header:
    """A request header's value, hashed by default (SHA-256, or HMAC-SHA-256 with `secret`,
    first 128 bits in hex) so that a secret such as an API key never leaves the app. Every
    process must use the same `secret` for them to share counters. Absent: no descriptor."""

    def __init__(
        self,
        name: str,
        key: str | None = None,
        *,
        hashed: bool = True,
        secret: str | bytes | None = None,
    ) -> None:
        self.name = name
        self.key = key or name.lower().replace("-", "_")
        self.hashed = hashed
        self.secret = secret.encode() if isinstance(secret, str) else secret

    def digest(self, value: str) -> str:
        data = value.encode("utf-8", "surrogateescape")
        if self.secret:
            return hmac.new(self.secret, data, hashlib.sha256).hexdigest()[:32]
        return hashlib.sha256(data).hexdigest()[:32]

    def __call__(self, request: Request, /) -> Entry | None:
        value = request.headers.get(self.name)
        if not value:
            return None
        return (self.key, self.digest(value) if self.hashed else value)


class Route:
    """The matched route's path template (`/items/{item_id}`), never the raw path, so one
    route is one counter. No descriptor when no route matches (a 404)."""

    def __init__(self, key: str = "route") -> None:
        self.key = key

    def __call__(self, request: Request, /) -> Entry | None:
        template = route_template(request.scope)
        return None if template is None else (self.key, template)


class Method:
    """The HTTP method (`GET`, `POST`, ...)."""

    def __init__(self, key: str = "method") -> None:
        self.key = key

    def __call__(self, request: Request, /) -> Entry:
        return (self.key, request.method)


class State:
    """A value the app put on `request.state` (a user id, a tier), as a string. Absent or
    None: no descriptor."""

    def __init__(self, attribute: str, key: str | None = None) -> None:
        self.attribute = attribute
        self.key = key or attribute

    def __call__(self, request: Request, /) -> Entry | None:
        value = getattr(request.state, self.attribute, None)
        return None if value is None else (self.key, str(value))


def remote_address(
    key: str = "remote_address",
    *,
    trusted_proxies: Iterable[str | IPNetwork] = (),
    ipv6_prefix: int = 64,
) -> RemoteAddress:
    return RemoteAddress(key, trusted_proxies=trusted_proxies, ipv6_prefix=ipv6_prefix)


def header(
    name: str, key: str | None = None, *, hashed: bool = True, secret: str | bytes | None = None
) -> Header:
    return Header(name, key, hashed=hashed, secret=secret)


def route(key: str = "route") -> Route:
    return Route(key)


def method(key: str = "method") -> Method:
    return Method(key)


def state(attribute: str, key: str | None = None) -> State:
    return State(attribute, key)


def route_template(scope: Scope) -> str | None:
    """The path template of the route that takes (or took) this request, mounts included.

    The app's routes are matched again from the top (as Starlette's router does), so the
    answer is the same before routing (in a middleware) and after it (in a dependency).
    """
    top = scope.get("router") or scope.get("app")  # after routing, "router" is the top one
    routes = getattr(top, "routes", None)
    if not routes:
        return None
    if "app_root_path" in scope:  # a Mount matched: undo its change of root_path
        scope = {**scope, "root_path": scope["app_root_path"]}
    return _match_routes(routes, scope, "")


def _match_routes(routes: Sequence[BaseRoute], scope: Scope, prefix: str) -> str | None:
    partial: str | None = None
    for candidate in routes:
        match, child = candidate.matches(scope)
        if match is Match.NONE:
            continue
        inner = getattr(candidate, "routes", None)
        contexts = getattr(candidate, "effective_route_contexts", None)
        if callable(contexts):  # a router included by recent FastAPI: matches() tells no more
            template = _match_route_contexts(contexts(), scope, prefix)
        elif inner is not None:  # a Mount or a Host
            here = prefix + getattr(candidate, "path", "")
            if inner:
                template = _match_routes(inner, {**scope, **child}, here)
            else:  # a mounted ASGI app without routes
                template = here + "/{path}"
        else:
            path_format = getattr(candidate, "path_format", None)
            template = prefix + path_format if isinstance(path_format, str) else None
        if match is Match.FULL:
            return template
        if partial is None:
            partial = template
    return partial


def _match_route_contexts(contexts: Iterable[Any], scope: Scope, prefix: str) -> str | None:
    partial: str | None = None
    for context in contexts:
        match, _ = context.matches(scope)
        if match is Match.NONE:
            continue
        selected = getattr(context, "starlette_route", None)
        path_format = getattr(selected, "path_format", None) or getattr(
            context, "path_format", None
        )
        template = prefix + path_format if isinstance(path_format, str) else None
        if match is Match.FULL:
            return template
        if partial is None:
            partial = template
    return partial


async def build_descriptors(source: DescriptorSource, request: Request) -> list[DescriptorLike]:
    """The descriptors for one request: a function's answer, or each rule whose parts all
    have a value."""
    if callable(source):
        result = source(request)
        if inspect.isawaitable(result):
            result = await result
        return list(result)
    built: list[DescriptorLike] = []
    for rule in source:
        entries: list[Entry] = []
        for part in rule:
            entry = part if isinstance(part, tuple) else part(request)
            if entry is None:
                break
            entries.append(entry)
        else:
            built.append(entries)
    return built


def check_source(source: DescriptorSource) -> None:
    if callable(source):
        return
    if isinstance(source, str | bytes) or not isinstance(source, Sequence):
        raise InvalidRequest("descriptors must be a function of the request or a list of rules")
    for position, rule in enumerate(source):
        if isinstance(rule, str | bytes) or not isinstance(rule, Sequence) or not rule:
            raise InvalidRequest(
                f"descriptors[{position}] must be a non-empty list of builders and (key, value)"
            )
        for part in rule:
            literal = (
                isinstance(part, tuple) and len(part) == 2 and all(isinstance(p, str) for p in part)
            )
            if not literal and not callable(part):
                raise InvalidRequest(
                    f"descriptors[{position}]: {part!r} is neither a builder nor a (key, value)"
                )
