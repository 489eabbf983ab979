"""The client README's FastAPI snippet and its config, run as they are written there."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ratelimitd_client import AsyncRateLimitClient

from ratelimitd.clock import FakeClock
from tests.client.conftest import ROOT, http, target
from tests.client.test_examples import T
from tests.integration.conftest import StartServer

README = ROOT / "clients" / "python" / "README.md"


def block(language: str) -> str:
    """The first fenced block of `language` in the README."""
    match = re.search(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL)
    assert match is not None, f"no {language} block in {README}"
    return match.group(1)


async def test_the_readme_fastapi_integration_works_as_written(start_server: StartServer) -> None:
    code = block("python")
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    server = await start_server(block("yaml"), clock=FakeClock(T))
    assert code.count('"127.0.0.1:8081"') == 1
    namespace: dict[str, Any] = {}
    exec(compile(code.replace("127.0.0.1:8081", target(server)), str(README), "exec"), namespace)
    client: AsyncRateLimitClient = namespace["client"]
    # as written, but with room for a first call in a cold test process
    client.options = dataclasses.replace(client.options, timeout=2.0)
    try:
        async with http(namespace["app"], peer=("198.51.100.7", 5000)) as browser:
            page = await browser.get("/anything")
            logins = [await browser.post("/login") for _ in range(6)]
    finally:
        await client.aclose()
    assert page.status_code == 404 and page.headers["RateLimit-Limit"] == "100"
    assert [r.status_code for r in logins] == [200] * 5 + [429]
    assert logins[0].headers["RateLimit-Limit"] == "5"
    assert logins[0].headers["RateLimit-Remaining"] == "4"
    assert logins[-1].headers["Retry-After"] == "840"
    assert logins[-1].json() == {"error": "rate_limited", "retry_after": 840}
