"""Structured logs (structlog) through the standard logging module.

`configure()` picks JSON (the container default) or console output and the level; grpc's and
redis-py's own stdlib logs come out in the same format. Request-scoped fields are bound once
per call with `bind_request()` and appear on every line logged while the call is handled.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        *_SHARED,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.format_exc_info,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)

LOG_FORMATS = ("json", "console")


def configure(level: str = "info", fmt: str = "console") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*_SHARED, structlog.processors.format_exc_info],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)


def bind_request(**fields: Any) -> None:
    """Binds fields for the rest of this call.

    Each call runs in its own asyncio task with its own copy of the context, so nothing
    leaks from one call to the next and there is nothing to clear.
    """
    structlog.contextvars.bind_contextvars(**fields)


def hashed(value: str) -> str:
    """A short stable digest, to log which value without logging the value."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
