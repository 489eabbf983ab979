"""The key space and the gRPC request bodies h2load sends.

The key space holds `keys` users. The first `hot_keys` are hot (`hot-<n>`, a low limit in
bench/config.yaml), the others ordinary (`u-<n>`). A request for user U with D descriptors
carries the first D of: `user=U`; `route=api, user=U`; `remote_address=<an IP of U>`.

h2load repeats one body for every request of a process, so each h2load process of each round
gets its own body, drawn by `draw_user`: a hot user with probability `hot`, else a uniformly
drawn ordinary one. Draws are seeded by (seed, concurrency, descriptors, round, process), so
every target of a run receives the same sequence of payloads.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

DOMAIN = "bench"
METHOD_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
MAX_DESCRIPTORS = 3


@dataclass(frozen=True)
class KeySpace:
    keys: int = 10_000
    hot: float = 0.1  # probability that a payload's user is a hot one
    hot_keys: int = 10
    seed: int = 1

    def __post_init__(self) -> None:
        if self.keys < 1 or not 0 <= self.hot <= 1:
            raise ValueError("keys must be >= 1 and hot within [0, 1]")
        if not 0 <= self.hot_keys <= self.keys:
            raise ValueError("hot_keys must be within [0, keys]")

    def user(self, index: int) -> str:
        return f"hot-{index}" if index < self.hot_keys else f"u-{index}"

    def draw_user(self, rng: random.Random) -> int:
        if self.hot_keys and (self.hot_keys == self.keys or rng.random() < self.hot):
            return rng.randrange(self.hot_keys)
        return rng.randrange(self.hot_keys, self.keys)

    def rng(self, *parts: object) -> random.Random:
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))


def ip_of(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def descriptor_entries(
    space: KeySpace, index: int, descriptors: int
) -> list[list[tuple[str, str]]]:
    """The entries of each descriptor of a request for user `index`."""
    if not 1 <= descriptors <= MAX_DESCRIPTORS:
        raise ValueError(f"descriptors must be 1 to {MAX_DESCRIPTORS}")
    user = space.user(index)
    every = [
        [("user", user)],
        [("route", "api"), ("user", user)],
        [("remote_address", ip_of(index))],
    ]
    return every[:descriptors]


def counter_keys(space: KeySpace, index: int, descriptors: int) -> set[str]:
    """Names of the counters a request touches (one per descriptor), to count distinct keys."""
    return {
        "|".join(f"{k}={v}" for k, v in entries)
        for entries in descriptor_entries(space, index, descriptors)
    }


def request(
    space: KeySpace, index: int, descriptors: int, hits: int = 0
) -> rls_pb2.RateLimitRequest:
    message = rls_pb2.RateLimitRequest(domain=DOMAIN, hits_addend=hits)
    for entries in descriptor_entries(space, index, descriptors):
        descriptor = message.descriptors.add()
        for key, value in entries:
            descriptor.entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value))
    return message


def grpc_frame(message: rls_pb2.RateLimitRequest) -> bytes:
    """One length-prefixed gRPC message: not compressed, 4-byte big-endian length, body."""
    body: bytes = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body
