"""Quota-aware routing through a real Envoy (deploy/envoy/quota-routing.yaml with
deploy/config/quota-routing.yaml): the primary model while its quota lasts, then the
fallback; refused only when every quota is used up."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import (
    CONFIG_DIR,
    LOOPBACK,
    REPO,
    EnvoyProcess,
    get,
    load_template,
    service_env,
    wait_for_window_start,
)
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess

PRIMARY_QUOTA = 3  # deploy/config/quota-routing.yaml


def model_server(name: str) -> http.server.ThreadingHTTPServer:
    class Model(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"{name}\n".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Model)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, int]]:
    servers = {name: model_server(name) for name in ("primary", "fallback")}
    yield {name: int(server.server_address[1]) for name, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def routing_envoy(module_redis: RedisServer, models: dict[str, int]) -> Iterator[EnvoyProcess]:
    env = service_env(
        RATELIMITD_REDIS_URL=module_redis.url,
        RATELIMITD_RESPONSE_DYNAMIC_METADATA="true",
        RATELIMITD_LOG_LEVEL="warning",
    )
    with ServiceProcess(CONFIG_DIR / "quota-routing.yaml", env) as service:
        template = load_template(REPO / "deploy" / "envoy" / "quota-routing.yaml")
        with EnvoyProcess(
            ratelimitd_port=service.grpc_port,
            upstream_port=models["primary"],
            other_upstreams={"fallback": models["fallback"]},
            failure_mode_deny=False,
            template=template,
        ) as proxy:
            yield proxy


def test_traffic_moves_to_the_fallback_once_the_primary_quota_is_used_up(
    routing_envoy: EnvoyProcess, module_redis: RedisServer
) -> None:
    wait_for_window_start(60, margin=3)  # the quotas are per minute
    module_redis.client().flushall()  # both quotas whole
    replies = [get(routing_envoy.port, "/v1/complete") for _ in range(PRIMARY_QUOTA + 3)]
    assert [reply.status for reply in replies] == [200] * (PRIMARY_QUOTA + 3)
    served = [reply.body.strip() for reply in replies]
    assert served == ["primary"] * PRIMARY_QUOTA + ["fallback"] * 3
