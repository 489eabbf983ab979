"""Login protection with ratelimitd: 5 failed attempts per 15 minutes per IP, cleared by a
successful login, and forgot-password 3 per minute per IP. See README.md beside this file."""

import hmac
import logging
import os
from collections.abc import Sequence

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from ratelimitd_client import AsyncRateLimitClient, RateLimitError
from ratelimitd_client.fastapi import (
    RateLimitExceeded,
    RateLimitHeadersMiddleware,
    rate_limit,
    rate_limit_exceeded_handler,
    remote_address,
)

DOMAIN = "login_example"
USERS = {"alice": "correct horse battery staple"}  # stands in for a real user store

log = logging.getLogger("examples.login")


class Credentials(BaseModel):
    username: str
    password: str


class Email(BaseModel):
    email: str


def create_app(client: AsyncRateLimitClient, trusted_proxies: Sequence[str] = ()) -> FastAPI:
    client_ip = remote_address(trusted_proxies=trusted_proxies)
    login_limit = rate_limit(client, DOMAIN, [[("route", "login"), client_ip]])
    forgot_limit = rate_limit(client, DOMAIN, [[("route", "forgot-password"), client_ip]])

    app = FastAPI(title="login example")
    app.add_middleware(RateLimitHeadersMiddleware)  # the headers on 401s too
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)

    @app.post("/login", dependencies=[Depends(login_limit)])
    async def login(credentials: Credentials, request: Request) -> dict[str, str]:
        expected = USERS.get(credentials.username, "")
        if not expected or not hmac.compare_digest(
            credentials.password.encode(), expected.encode()
        ):
            raise HTTPException(status_code=401, detail="wrong username or password")
        try:  # the attempts so far were this user's own typos: forget them
            await client.reset(DOMAIN, [[("route", "login"), client_ip(request)]])
        except RateLimitError as exc:  # the login stands; the counter expires by itself
            log.warning("could not reset the login counter: %s", exc)
        return {"user": credentials.username}

    @app.post("/forgot-password", status_code=202, dependencies=[Depends(forgot_limit)])
    async def forgot_password(email: Email) -> dict[str, str]:
        return {"status": "if that address has an account, a reset link is on its way"}

    return app


app = create_app(
    AsyncRateLimitClient(
        os.environ.get("RATELIMITD_ADDR", "127.0.0.1:8081"),
        admin_token=os.environ.get("RATELIMITD_ADMIN_TOKEN"),
    ),
    trusted_proxies=[p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p],
)
