"""FastAPI users' entry point: the same objects as `ratelimitd_client.starlette`.

from fastapi import Depends, FastAPI
from ratelimitd_client import AsyncRateLimitClient
from ratelimitd_client.fastapi import (RateLimitExceeded, rate_limit,
                                       rate_limit_exceeded_handler, remote_address)
"""

from ratelimitd_client.starlette import (
    DECISIONS_KEY,
    DescriptorSource,
    EntryBuilder,
    Header,
    Method,
    RateLimitExceeded,
    RateLimitHeadersMiddleware,
    RateLimitMiddleware,
    RemoteAddress,
    Route,
    Rule,
    State,
    build_descriptors,
    denial_response,
    header,
    method,
    rate_limit,
    rate_limit_exceeded_handler,
    remote_address,
    route,
    route_template,
    state,
)

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
    "method",
    "rate_limit",
    "rate_limit_exceeded_handler",
    "remote_address",
    "route",
    "route_template",
    "state",
]
