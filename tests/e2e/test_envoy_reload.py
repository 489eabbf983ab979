"""A hot reload of the rules changes what Envoy answers, with no restart of either."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    CONFIG_DIR,
    EnvoyProcess,
    Upstream,
    assert_limited,
    assert_passed,
    get,
    new_client_ip,
    service_env,
    wait_for_window_start,
)
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess

PER_ROUTE = "      name: per_route\n      unit: minute\n      requests_per_unit: 3\n"


@pytest.fixture
def live_config(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, folder)
    assert PER_ROUTE in (folder / "envoy-demo.yaml").read_text()
    return folder


@pytest.fixture
def reloading_stack(
    live_config: Path, module_redis: RedisServer, upstream: Upstream
) -> Iterator[tuple[ServiceProcess, EnvoyProcess]]:
    env = service_env(
        RATELIMITD_REDIS_URL=module_redis.url,
        RATELIMITD_LOG_LEVEL="info",
        RATELIMITD_CONFIG_POLL_S="0.1",
        RATELIMITD_KEY_PREFIX=f"reload{time.time_ns()}:",
    )
    with (
        ServiceProcess(live_config, env) as service,
        EnvoyProcess(
            ratelimitd_port=service.grpc_port, upstream_port=upstream.port, failure_mode_deny=False
        ) as proxy,
    ):
        proxy.warm_up()
        yield service, proxy


def set_route_limit(folder: Path, requests: int) -> None:
    path = folder / "envoy-demo.yaml"
    text = path.read_text()
    start = text.index("      name: per_route\n")
    end = text.index("\n", text.index("requests_per_unit:", start))
    path.write_text(
        text[:start]
        + f"      name: per_route\n      unit: minute\n      requests_per_unit: {requests}"
        + text[end:]
    )


def wait_for_log(service: ServiceProcess, text: str, count: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if service.log().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged {count} times:\n{service.log()}")


def test_hot_reload_changes_envoys_answers(
    reloading_stack: tuple[ServiceProcess, EnvoyProcess], live_config: Path
) -> None:
    service, envoy = reloading_stack
    wait_for_window_start(60, margin=10)
    for _ in range(3):
        assert_passed(get(envoy.port, "/search", client_ip=new_client_ip()), "/search")
    assert_limited(get(envoy.port, "/search", client_ip=new_client_ip()))

    set_route_limit(live_config, 5)  # raised: the count of 3 is kept, 2 more pass
    wait_for_log(service, "config reloaded", 1)
    for _ in range(2):
        assert_passed(get(envoy.port, "/search", client_ip=new_client_ip()), "/search")
    assert_limited(get(envoy.port, "/search", client_ip=new_client_ip()))

    (live_config / "envoy-demo.yaml").write_text("domain: envoy-demo\ndescriptors: [broken\n")
    wait_for_log(service, "config reload failed, keeping the old config", 1)
    assert_limited(get(envoy.port, "/search", client_ip=new_client_ip()))  # the old rules serve

    shutil.copy(CONFIG_DIR / "envoy-demo.yaml", live_config / "envoy-demo.yaml")
    set_route_limit(live_config, 1000)
    wait_for_log(service, "config reloaded", 2)
    assert_passed(get(envoy.port, "/search", client_ip=new_client_ip()), "/search")
