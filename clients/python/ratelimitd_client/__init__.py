"""ratelimitd's Python client: ask a ratelimitd service whether requests may pass.

`RateLimitClient` (blocking) and `AsyncRateLimitClient` (asyncio) share one core that does no
I/O. Starlette/FastAPI integration is in `ratelimitd_client.starlette` (extra `starlette`).
"""

from ratelimitd_client._async import AsyncRateLimitClient
from ratelimitd_client._core import (
    DEFAULT_TIMEOUT_S,
    Decision,
    DescriptorLike,
    DescriptorStatus,
    Entry,
    Failure,
    FailureMode,
    InvalidRequest,
    LimitState,
    RateLimit,
    RateLimitError,
    ServiceUnavailable,
    Unauthenticated,
)
from ratelimitd_client._leases import Lease
from ratelimitd_client._reservations import Reservation
from ratelimitd_client._sync import RateLimitClient

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AsyncRateLimitClient",
    "Decision",
    "DescriptorLike",
    "DescriptorStatus",
    "Entry",
    "Failure",
    "FailureMode",
    "InvalidRequest",
    "Lease",
    "LimitState",
    "RateLimit",
    "RateLimitClient",
    "RateLimitError",
    "Reservation",
    "ServiceUnavailable",
    "Unauthenticated",
    "__version__",
]
