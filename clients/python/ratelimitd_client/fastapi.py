"""FastAPI users' entry point: the same objects as `ratelimitd_client.starlette`.

from fastapi import Depends, FastAPI
from ratelimitd_client import AsyncRateLimitClient
from ratelimitd_client.fastapi import (RateLimitExceeded, rate_limit,
                                       rate_limit_exceeded_handler, remote_address)
"""

from ratelimitd_client import starlette as _starlette
from ratelimitd_client.starlette import *  # noqa: F403 - the same public objects, by design

__all__ = _starlette.__all__
