"""Concurrency limits: how many requests a key may have in flight (`algorithm: concurrency`).

`acquire(domain, descriptors)` matches the descriptors as a decision does and takes one lease
on each that a concurrency rule matches, all or none: a lease that is not allowed holds
nothing anywhere. A lease ends when `release` is called with its id, or by its TTL
(`lease_ttl_s`), so an app that crashed while holding one frees it by then.

A lease id carries what `release` needs, so that releasing costs one round trip and no record:
a random token (the lease's name in each key's set) and the keys it holds. A forged id can
name keys, but not another lease's token, so it can end nothing but itself.

Decisions (`ShouldRateLimit`, so Envoy) do not count concurrency rules: nothing would release
what they took (docs/algorithms.md, "Concurrency limits").
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass

from ratelimitd.backends.base import Backend, LeaseRequest
from ratelimitd.errors import InvalidRequest
from ratelimitd.keys import counter_base
from ratelimitd.limiter import Limiter, validate
from ratelimitd.model import Descriptor, Request

_TOKEN_BYTES = 16
MAX_LEASE_ID = 65_536


@dataclass(frozen=True, slots=True)
class Lease:
    id: str  # empty when not allowed
    allowed: bool
    retry_after: float  # when not allowed: until a held lease ends by its TTL, at the latest
    ttl_s: float  # when allowed: how long the lease lives unless released (0: it holds nothing)


class Leases:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def acquire(self, domain: str, descriptors: tuple[Descriptor, ...]) -> Lease:
        requests = self._lease_requests(domain, descriptors)
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        if not requests:  # no concurrency rule applies: nothing to hold
            return Lease(encode_lease_id(token, []), True, 0.0, 0.0)
        results = await self._backend.acquire(requests, token)
        if all(result.allowed for result in results):
            keys = [request.key for request in requests]
            ttl = min(request.ttl_s for request in requests)
            return Lease(encode_lease_id(token, keys), True, 0.0, ttl)
        wait = max(result.retry_after for result in results if not result.allowed)
        return Lease("", False, max(wait, 0.0), 0.0)

    async def release(self, lease_id: str) -> bool:
        """Ends the lease; whether it was still held (not released before, nor ended by TTL)."""
        token, keys = decode_lease_id(lease_id, self.limiter.options.key_prefix)
        return bool(keys) and await self._backend.release(keys, token) > 0

    def _lease_requests(
        self, domain: str, descriptors: tuple[Descriptor, ...]
    ) -> list[LeaseRequest]:
        validate(Request(domain, descriptors), self.limiter.options.bounds)
        config = self.limiter.config
        requests: dict[str, LeaseRequest] = {}  # one lease per key, however often it is named
        for descriptor in descriptors:
            match = config.match(domain, descriptor.entries)
            if match is None or match.rule.concurrency is None:
                continue
            limit = match.rule.concurrency
            base = counter_base(self.limiter.options.key_prefix, domain, match.counter_entries)
            key = f"{base}:{limit.counter_id}"
            requests[key] = LeaseRequest(key, limit.max_in_flight, limit.lease_ttl_s)
        return list(requests.values())

    @property
    def _backend(self) -> Backend:
        return self.limiter.backend


def encode_lease_id(token: str, keys: list[str]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(keys).encode()).rstrip(b"=").decode()
    return f"{token}.{payload}"


def decode_lease_id(lease_id: str, key_prefix: str) -> tuple[str, list[str]]:
    """The token and keys of a lease id; `InvalidRequest` for anything else."""
    if not lease_id or len(lease_id) > MAX_LEASE_ID or not lease_id.isascii():
        raise InvalidRequest(f"not a lease id: {lease_id[:64]!r}")
    token, _, payload = lease_id.partition(".")
    try:
        keys = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidRequest(f"not a lease id: {lease_id[:64]!r}") from None
    if not token or not (
        isinstance(keys, list)
        and all(
            isinstance(key, str) and key.startswith(key_prefix) and key.endswith(":cc")
            for key in keys
        )
    ):
        raise InvalidRequest(f"not a lease id: {lease_id[:64]!r}")
    return token, keys
