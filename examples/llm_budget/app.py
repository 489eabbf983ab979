"""Token budgets per API key for an LLM API: a probe before the answer, the tokens it used
charged when its stream ends. See README.md beside this file."""

import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from ratelimitd_client import AsyncRateLimitClient
from ratelimitd_client.fastapi import denial_response, header

DOMAIN = "llm_budget"
# Stands in for a real key store: API key -> account.
API_KEYS = {"demo-key-1": "acme", "demo-key-2": "globex"}

Model = Callable[[str, int], AsyncIterator[str]]


async def fake_model(prompt: str, max_tokens: int) -> AsyncIterator[str]:
    """Streams `max_tokens` tokens ("token0 ", "token1 ", ...): one token, one chunk."""
    for index in range(max_tokens):
        yield f"token{index} "


class Completion(BaseModel):
    prompt: str
    max_tokens: int = Field(default=100, ge=1, le=100_000)


def create_app(
    client: AsyncRateLimitClient, api_keys: Mapping[str, str] = API_KEYS, model: Model = fake_model
) -> FastAPI:
    api_key = header("X-API-Key", key="api_key")  # sends a hash of the key, never the key

    def budget(request: Request) -> list[list[tuple[str, str]]]:
        key = request.headers.get("x-api-key", "")
        if key not in api_keys:
            raise HTTPException(status_code=401, detail="a valid X-API-Key header is required")
        return [[("api_key", api_key.digest(key))]]

    app = FastAPI(title="LLM token budget example")

    @app.post("/v1/completions", response_model=None)
    async def complete(
        body: Completion, descriptors: Annotated[list[list[tuple[str, str]]], Depends(budget)]
    ) -> Response:
        probe = await client.check(DOMAIN, descriptors, hits=0)  # anything left? (charges 0)
        if not probe.allowed:
            return denial_response(probe)  # 429, Retry-After and the RateLimit-* headers

        async def stream() -> AsyncIterator[str]:
            used = 0
            try:
                async for token in model(body.prompt, body.max_tokens):
                    used += 1
                    yield token
            finally:  # the end of the stream, or the client gone: what was produced counts
                if used:
                    await client.check(DOMAIN, descriptors, hits=used)

        return StreamingResponse(stream(), media_type="text/plain", headers=probe.headers())

    return app


app = create_app(AsyncRateLimitClient(os.environ.get("RATELIMITD_ADDR", "127.0.0.1:8081")))
