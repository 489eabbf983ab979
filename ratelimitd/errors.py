"""The few exceptions ratelimitd raises on purpose.

Foreign exceptions (YAML, redis-py, grpc) are translated into these at the module boundary
that meets them, with `raise ... from exc`.
"""

from __future__ import annotations


class RatelimitdError(Exception):
    """Base of every error raised on purpose."""


class ConfigError(RatelimitdError):
    """A config that cannot be loaded. `errors` holds every `FILE: message` line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class InvalidRequest(RatelimitdError):
    """A request that is malformed: answered with INVALID_ARGUMENT."""


class BackendError(RatelimitdError):
    """The counter store failed or timed out."""

    def __init__(self, message: str, kind: str = "error") -> None:
        self.kind = kind
        super().__init__(message)
