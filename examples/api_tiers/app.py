"""API keys in free, premium and enterprise tiers, each with its own token bucket per key.
The tier comes from the key. See README.md beside this file."""

import os
from collections.abc import Mapping, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from ratelimitd_client import AsyncRateLimitClient
from ratelimitd_client.fastapi import RateLimitMiddleware, header, remote_address

DOMAIN = "api_tiers"
# Stands in for a real key store: API key -> tier.
API_KEYS = {
    "free-demo-key": "free",
    "premium-demo-key": "premium",
    "enterprise-demo-key": "enterprise",
}


def create_app(
    client: AsyncRateLimitClient,
    api_keys: Mapping[str, str] = API_KEYS,
    trusted_proxies: Sequence[str] = (),
) -> FastAPI:
    api_key = header("X-API-Key", key="api_key")  # sends a hash of the key, never the key
    client_ip = remote_address(trusted_proxies=trusted_proxies)

    def descriptors(request: Request) -> list[list[tuple[str, str]]]:
        key = request.headers.get("x-api-key", "")
        tier = api_keys.get(key)
        if tier is None:
            return [[("tier", "none"), client_ip(request)]]
        return [[("tier", tier), ("api_key", api_key.digest(key))]]

    def require_key(request: Request) -> str:
        tier = api_keys.get(request.headers.get("x-api-key", ""))
        if tier is None:
            raise HTTPException(status_code=401, detail="a valid X-API-Key header is required")
        return tier

    app = FastAPI(title="API tiers example")
    app.add_middleware(
        RateLimitMiddleware,
        client=client,
        domain=DOMAIN,
        descriptors=descriptors,
        exclude=["/healthz"],
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/quotes/{symbol}")
    async def quote(symbol: str, tier: Annotated[str, Depends(require_key)]) -> dict[str, str]:
        return {"symbol": symbol.upper(), "price": "42.00", "tier": tier}

    return app


app = create_app(
    AsyncRateLimitClient(os.environ.get("RATELIMITD_ADDR", "127.0.0.1:8081")),
    trusted_proxies=[p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p],
)
