"""Our errors as gRPC status codes: the one place the servicers translate them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from ratelimitd.errors import BackendError, InvalidRequest


def status_of(exc: InvalidRequest | BackendError) -> tuple[grpc.StatusCode, str]:
    """INVALID_ARGUMENT for a bad request, UNAVAILABLE when the backend failed."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.UNAVAILABLE, f"rate-limit backend unavailable: {exc}"


@contextlib.asynccontextmanager
async def grpc_status(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Aborts the call with `status_of` the error raised inside."""
    try:
        yield
    except (InvalidRequest, BackendError) as exc:
        await context.abort(*status_of(exc))
