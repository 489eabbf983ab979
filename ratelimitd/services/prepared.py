"""Raw `ShouldRateLimit` bodies to prepared decisions, remembered.

Envoy sends the same bytes for the same client, route and key every time, so parsing,
validating, matching and building counter keys (most of a decision's Python cost besides
counting) is done once per distinct body and reused while the config stays the same. The
memo is bounded in entries and in body size, and starts afresh when the config changes or
when it is full.
"""

from __future__ import annotations

from ratelimitd.config.index import RateLimitConfig
from ratelimitd.limiter import Limiter, Prepared
from ratelimitd.services.convert import request_from_bytes

MAX_ENTRIES = 10_000
MAX_BODY_BYTES = 1024


class PreparedRequests:
    def __init__(
        self, limiter: Limiter, max_entries: int = MAX_ENTRIES, max_body: int = MAX_BODY_BYTES
    ) -> None:
        self.limiter = limiter
        self.max_entries = max_entries
        self.max_body = max_body
        self._memo: dict[bytes, Prepared] = {}
        self._config: RateLimitConfig | None = None

    def __len__(self) -> int:
        return len(self._memo)

    def prepare(self, body: bytes) -> Prepared:
        """The prepared decision for an encoded `RateLimitRequest`; raises `InvalidRequest`."""
        prepared = self._memo.get(body)
        if prepared is not None and prepared.config is self.limiter.config:
            return prepared
        prepared = self.limiter.prepare(request_from_bytes(body))
        if prepared.config is not self._config:  # a reload: the old entries are all stale
            self._memo.clear()
            self._config = prepared.config
        if len(body) <= self.max_body:
            if len(self._memo) >= self.max_entries:
                self._memo.clear()
            self._memo[body] = prepared
        return prepared
