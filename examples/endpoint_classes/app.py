"""Limits by endpoint class, per client: auth 10/minute, execute 5/minute, read 100/minute.
Each router carries its class's limit as a dependency. See README.md beside this file."""

import os
from collections.abc import Sequence

from fastapi import APIRouter, Depends, FastAPI
from fastapi.params import Depends as DependsParam
from ratelimitd_client import AsyncRateLimitClient
from ratelimitd_client.fastapi import (
    RateLimitExceeded,
    RateLimitHeadersMiddleware,
    rate_limit,
    rate_limit_exceeded_handler,
    remote_address,
)

DOMAIN = "endpoint_classes"


def create_app(client: AsyncRateLimitClient, trusted_proxies: Sequence[str] = ()) -> FastAPI:
    client_ip = remote_address(trusted_proxies=trusted_proxies)

    def limit(endpoint_class: str) -> DependsParam:
        return Depends(
            rate_limit(client, DOMAIN, [[("endpoint_class", endpoint_class), client_ip]])
        )

    auth = APIRouter(prefix="/auth", dependencies=[limit("auth")])
    execute = APIRouter(prefix="/jobs", dependencies=[limit("execute")])
    read = APIRouter(prefix="/jobs", dependencies=[limit("read")])

    @auth.post("/token")
    async def token() -> dict[str, str]:
        return {"access_token": "demo", "token_type": "bearer"}

    @execute.post("/{job}/run")
    async def run(job: str) -> dict[str, str]:
        return {"job": job, "status": "started"}

    @read.get("/{job}")
    async def status(job: str) -> dict[str, str]:
        return {"job": job, "status": "done"}

    app = FastAPI(title="endpoint classes example")
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)
    for router in (auth, execute, read):
        app.include_router(router)
    return app


app = create_app(
    AsyncRateLimitClient(os.environ.get("RATELIMITD_ADDR", "127.0.0.1:8081")),
    trusted_proxies=[p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p],
)
