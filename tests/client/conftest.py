"""Fixtures for the client tests: real ratelimitd servers (in-process or a child process),
clients that are closed after each test, and the examples' apps loaded from their files."""

from __future__ import annotations

import importlib.util
import socket
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from ratelimitd_client import AsyncRateLimitClient, RateLimitClient

from tests.integration.conftest import grpc_server, start_server  # noqa: F401 - the fixtures, shared
from tests.servers.service import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOKEN = "client-test-token"

RULES = """
domain: web
descriptors:
  - key: remote_address
    rate_limit: {name: per_ip, unit: minute, requests_per_unit: 3}
  - key: route
    descriptors:
      - key: method
        rate_limit: {name: per_route, unit: minute, requests_per_unit: 2}
  - key: api_key
    rate_limit: {name: per_key, unit: hour, requests_per_unit: 5}
  - key: user
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 2}
  - key: plan
    value: small
    rate_limit: {name: small, unit: minute, requests_per_unit: 1}
  - key: plan
    value: large
    rate_limit: {name: large, unit: minute, requests_per_unit: 50}
  - key: plan
    value: unlimited
    rate_limit: {unlimited: true}
"""


def target(app: Any) -> str:
    return f"127.0.0.1:{app.grpc_port}"


@pytest.fixture
async def async_client() -> AsyncIterator[Callable[..., AsyncRateLimitClient]]:
    """Makes AsyncRateLimitClients, each closed after the test. Their timeout is 2 s unless
    given: a first call in a cold test process can take longer than the 50 ms default."""
    made: list[AsyncRateLimitClient] = []

    def make(address: str, **options: Any) -> AsyncRateLimitClient:
        options.setdefault("timeout", 2.0)
        client = AsyncRateLimitClient(address, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def sync_client() -> Iterator[Callable[..., RateLimitClient]]:
    made: list[RateLimitClient] = []

    def make(address: str, **options: Any) -> RateLimitClient:
        options.setdefault("timeout", 2.0)
        client = RateLimitClient(address, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def http(app: Any, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    """An httpx client talking to an ASGI app in-process, as if from `peer`."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=peer), base_url="http://testserver"
    )


def load_example(name: str) -> ModuleType:
    """examples/NAME/app.py as a fresh module (its `create_app` is what the tests use)."""
    path = EXAMPLES / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_rules(name: str) -> str:
    return (EXAMPLES / name / "ratelimitd.yaml").read_text()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose socket accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """`ratelimitd serve` as a child process on RULES, with the admin token set."""
    config = tmp_path_factory.mktemp("service") / "config.yaml"
    config.write_text(textwrap.dedent(RULES))
    with ServiceProcess(config, env={"RATELIMITD_ADMIN_TOKEN": TOKEN}) as process:
        yield process
