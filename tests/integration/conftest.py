"""A real ratelimitd gRPC + HTTP server on loopback, driven through Envoy's generated stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from ratelimitd.app import App
from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.clock import FakeClock
from ratelimitd.settings import Settings
from tests.helpers import config

StartServer = Callable[..., Coroutine[Any, Any, App]]


@pytest.fixture
def grpc_server() -> str:
    """Which gRPC server `start_server` runs (a module may parametrize it over both)."""
    return "native"


@pytest.fixture
async def start_server(grpc_server: str) -> AsyncIterator[StartServer]:
    """Starts servers on free loopback ports; every one is stopped after the test."""
    apps: list[App] = []

    async def start(
        rules: str, backend: Backend | None = None, clock: FakeClock | None = None, **settings: Any
    ) -> App:
        settings.setdefault("grpc_server", grpc_server)
        app = App(
            Settings(host="127.0.0.1", grpc_port=0, http_port=0, **settings),
            config=config(rules),
            backend=backend if backend is not None else MemoryBackend(clock),
        )
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=0)


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[App], rls_pb2_grpc.RateLimitServiceStub]]:
    channels: list[grpc.aio.Channel] = []

    def stub(app: App) -> rls_pb2_grpc.RateLimitServiceStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        channels.append(channel)
        return rls_pb2_grpc.RateLimitServiceStub(channel)

    yield stub
    for channel in channels:
        await channel.close()
