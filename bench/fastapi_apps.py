"""One tiny FastAPI app (GET /hello returns JSON), three ways:

- `none`: no rate limiting;
- `slowapi`: slowapi's `Limiter(key_func=get_remote_address, storage_uri=REDIS_URL)` with
  `@limiter.limit("1000000/minute")`: what our users run today;
- `ratelimitd`: `ratelimitd_client.starlette.RateLimitMiddleware` with an
  `AsyncRateLimitClient` (its defaults: 50 ms timeout, fails open) asking ratelimitd (on the
  same Redis) about `remote_address` under domain `fastapi` (1,000,000 a minute too).

uvicorn builds it with `--factory bench.fastapi_apps:app_from_env`, from BENCH_APP,
BENCH_REDIS_URL and BENCH_RATELIMITD_ADDR.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fastapi import FastAPI, Request

KINDS = ("none", "slowapi", "ratelimitd")
LIMIT = "1000000/minute"


def client_available() -> str | None:
    """None when our client's Starlette middleware imports, else why not."""
    try:
        module = importlib.import_module("ratelimitd_client.starlette")
    except ImportError as exc:
        return f"client not installed ({exc})"
    if not hasattr(module, "RateLimitMiddleware"):
        return "ratelimitd_client.starlette has no RateLimitMiddleware"
    return None


def create_app(kind: str, redis_url: str = "", ratelimitd_addr: str = "") -> FastAPI:
    if kind not in KINDS:
        raise ValueError(f"unknown app kind {kind!r}: expected one of {KINDS}")
    app = FastAPI()

    async def hello(request: Request) -> dict[str, Any]:
        return {"hello": "world"}

    if kind == "slowapi":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.util import get_remote_address

        limiter = Limiter(key_func=get_remote_address, storage_uri=redis_url)
        app.state.limiter = limiter
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
        app.get("/hello")(limiter.limit(LIMIT)(hello))
        return app
    if kind == "ratelimitd":
        client_module = importlib.import_module("ratelimitd_client")
        starlette = importlib.import_module("ratelimitd_client.starlette")
        app.add_middleware(
            starlette.RateLimitMiddleware,
            client=client_module.AsyncRateLimitClient(ratelimitd_addr),
            domain="fastapi",
            descriptors=[[starlette.remote_address()]],
        )
    app.get("/hello")(hello)
    return app


def app_from_env() -> FastAPI:
    return create_app(
        os.environ.get("BENCH_APP", "none"),
        redis_url=os.environ.get("BENCH_REDIS_URL", ""),
        ratelimitd_addr=os.environ.get("BENCH_RATELIMITD_ADDR", ""),
    )
