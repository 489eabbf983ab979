"""Token budgets through a real Envoy (deploy/envoy/llm-budget.yaml, deploy/config/llm-budget.yaml).

Envoy asks ratelimitd twice per request: a probe on the request (`hits_addend: {number: 0}`),
and, when the stream ends (`apply_on_stream_done`), the tokens the answer used
(`hits_addend: {format: "%RESP(x-tokens-used)%"}`). Under `charge: always` every report counts
in full: concurrent answers overshoot the budget by at most what was in flight when it ran
out, and later requests are refused until the windows have paid the debt off.

The shipped rules count per minute; here the minute is 5 s, so that the debt is paid within
the test.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.harness import (
    CONFIG_DIR,
    LOOPBACK,
    REPO,
    EnvoyProcess,
    Reply,
    get,
    load_template,
    service_env,
)
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess

WINDOW_S = 5  # the shipped per-minute budget, shortened
BUDGET = 10_000
STREAMS = 12
TOKENS_PER_ANSWER = 2_000
ANSWER_DELAY_S = 0.5  # the model takes a while: every request is in flight before any report


class _Model(http.server.BaseHTTPRequestHandler):
    """A fake LLM: answers after a moment with the tokens it "used" (from ?tokens=N)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        tokens = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["tokens"][0]
        time.sleep(ANSWER_DELAY_S)
        body = b"an answer\n"
        self.send_response(200)
        self.send_header("x-tokens-used", tokens)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def model() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Model)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def short_window_rules(into: Path) -> Path:
    text = (CONFIG_DIR / "llm-budget.yaml").read_text()
    assert "unit: minute" in text and f"requests_per_unit: {BUDGET}" in text
    shortened = text.replace(
        "unit: minute", f"unit: second\n        unit_multiplier: {WINDOW_S}", 1
    )
    (into / "llm-budget.yaml").write_text(shortened)
    return into


@pytest.fixture(scope="module")
def budget_service(
    module_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    rules = short_window_rules(tmp_path_factory.mktemp("llm-rules"))
    env = service_env(RATELIMITD_REDIS_URL=module_redis.url, RATELIMITD_LOG_LEVEL="warning")
    with ServiceProcess(rules, env) as service:
        yield service


@pytest.fixture(scope="module")
def llm_envoy(budget_service: ServiceProcess, model: int) -> Iterator[EnvoyProcess]:
    template = load_template(REPO / "deploy" / "envoy" / "llm-budget.yaml")
    with EnvoyProcess(
        ratelimitd_port=budget_service.grpc_port,
        upstream_port=model,
        failure_mode_deny=False,
        template=template,
    ) as proxy:
        yield proxy


def ask(envoy: EnvoyProcess, key: str, tokens: int) -> Reply:
    return get(envoy.port, f"/v1/complete?tokens={tokens}", headers={"x-api-key": key})


def charged(client: redis.Redis, key: str) -> int:
    """The count of the key's budget window (the 5-s fixed window), 0 when none."""
    names = [name for name in client.scan_iter(match=f"*api_key={key}*") if name.endswith(b":fw5")]
    if not names:
        return 0
    (name,) = names
    return int(client.hget(name, "c") or 0)


def wait_for_next_window() -> None:
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.2)


def test_concurrent_answers_are_charged_in_full_and_the_debt_is_waited_out(
    llm_envoy: EnvoyProcess, module_redis: RedisServer
) -> None:
    key = f"key-{time.time_ns()}"
    client = redis.Redis.from_url(module_redis.url)
    # the probe that warms the connection must not be in this window's count: a fresh key
    assert ask(llm_envoy, f"warm-{key}", 0).status == 200
    if time.time() % WINDOW_S > 1.0:  # the whole burst, and its reports, in one window
        wait_for_next_window()

    # Every stream is admitted while the budget lasts: all probes come before any report.
    with ThreadPoolExecutor(STREAMS) as pool:
        replies = list(pool.map(lambda _: ask(llm_envoy, key, TOKENS_PER_ANSWER), range(STREAMS)))
    assert [reply.status for reply in replies] == [200] * STREAMS

    # Every report is charged in full: none is lost for not fitting.
    deadline = time.monotonic() + 3
    while charged(client, key) < STREAMS * TOKENS_PER_ANSWER and time.monotonic() < deadline:
        time.sleep(0.05)
    total = charged(client, key)
    assert total == STREAMS * TOKENS_PER_ANSWER
    overshoot = total - BUDGET
    assert 0 < overshoot <= STREAMS * TOKENS_PER_ANSWER  # at most what was in flight

    # Refused until the debt is paid: 14,000 over; the next window starts at 14,000 (still
    # refused), the one after at 4,000.
    refused = ask(llm_envoy, key, 1)
    assert refused.status == 429 and refused.headers.get("x-envoy-ratelimited") == "true"
    wait_for_next_window()
    assert ask(llm_envoy, key, 1).status == 429
    # nothing charged since: the probes cost nothing, and a 429 carries no x-tokens-used
    assert charged(client, key) == total
    wait_for_next_window()
    assert ask(llm_envoy, key, 1).status == 200


def test_the_shipped_rules_are_minutes_and_charge_always() -> None:
    text = (CONFIG_DIR / "llm-budget.yaml").read_text()
    assert re.search(r"unit: minute\s+requests_per_unit: 10000\s+charge: always", text)
