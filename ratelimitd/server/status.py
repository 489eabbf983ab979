"""Our errors as gRPC status codes: the one place the servicers translate them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from ratelimitd.errors import BackendError, InvalidRequest


@contextlib.asynccontextmanager
async def grpc_status(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """INVALID_ARGUMENT for a bad request, UNAVAILABLE when the backend failed."""
    try:
        yield
    except InvalidRequest as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except BackendError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"rate-limit backend unavailable: {exc}")
