"""Every limit the HTTP/2 server puts on one client, in one place, with its default.

A sidecar that any pod can reach must not let one connection take the service's memory or
its event loop. Each limit answers as RFC 9113 and grpc do: GOAWAY `ENHANCE_YOUR_CALM` for a
connection that floods, RST_STREAM `REFUSED_STREAM` for a stream over the concurrency limit,
a `RESOURCE_EXHAUSTED` status for one call too large; each time, `ratelimitd_h2_limited_total`
counts it by limit (docs/reliability.md has the attacks they answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ratelimitd import metrics
from ratelimitd.logs import get_logger

log = get_logger("ratelimitd.h2")


@dataclass(frozen=True, slots=True)
class Limits:
    # connections and streams
    max_connections: int = 1024  # open at once; more get GOAWAY ENHANCE_YOUR_CALM
    max_concurrent_streams: int = 256  # advertised; more are refused (REFUSED_STREAM)
    # headers: grpc's own limits are 8 KiB (soft) and 16 KiB (hard)
    max_header_list: int = 16 * 1024  # decoded, per request; more fails that call
    max_header_block: int = 64 * 1024  # as sent (HEADERS + CONTINUATION); more: GOAWAY
    max_continuations: int = 16  # CONTINUATION frames in one header block
    remembered_blocks: int = 64  # decoded header blocks remembered per connection
    remembered_block_size: int = 1024  # larger blocks are decoded each time
    # request bodies
    connection_buffer: int = 16 << 20  # request bytes held (not yet handed to a call)
    # floods: a token bucket per connection (so many per second, after a burst)
    resets_per_s: float = 100.0  # streams the client resets (CVE-2023-44487, rapid reset)
    resets_burst: int = 1000
    empty_frames_per_s: float = 100.0  # DATA/HEADERS/CONTINUATION without content
    empty_frames_burst: int = 200
    pings_per_s: float = 20.0
    pings_burst: int = 100
    settings_per_s: float = 20.0
    settings_burst: int = 100
    # time
    handshake_timeout_s: float = 10.0  # for the preface and the first SETTINGS
    partial_frame_timeout_s: float = 10.0  # for a frame or header block begun to be finished
    idle_timeout_s: float = 300.0  # with no call open; then GOAWAY and close
    request_body_timeout_s: float = 30.0  # from a unary request's headers to its end
    frames_per_read: int = 256  # then the loop serves others before this connection again


DEFAULT_LIMITS = Limits()


class TokenBucket:
    """`take()` is False once more than `burst` events came faster than `rate` per second."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def count(limit: str) -> None:
    """One client stopped by `limit` (the label of `ratelimitd_h2_limited_total`)."""
    metrics.H2_LIMITED.labels(limit).inc()


class ErrorLog:
    """Connection errors, logged as the first one in full and then one summary per period:
    a flood of bad connections must not become a flood of log lines."""

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self._since = float("-inf")
        self._suppressed: dict[str, int] = {}

    def closing(self, peer: str, code: int, reason: str) -> None:
        now = time.monotonic()
        if now - self._since < self.period_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        if self._suppressed:
            log.warning(
                "more HTTP/2 connections closed for errors",
                count=sum(self._suppressed.values()),
                period_s=self.period_s,
                reasons=dict(sorted(self._suppressed.items(), key=lambda kv: -kv[1])[:5]),
            )
            self._suppressed = {}
        self._since = now
        log.warning("closing an HTTP/2 connection", peer=peer, error=code, reason=reason)


ERRORS = ErrorLog()
