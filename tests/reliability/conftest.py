"""Fixtures of the reliability suite: in-process services, their clients, and figures.

Figures (calls made, errors, admitted against the limit, recovery time, ...) are attached to
each test's report (`record_property`, shown in JUnit XML) and, when
`RATELIMITD_RELIABILITY_FIGURES` names a file, appended to it as JSON lines: that is where the
numbers in docs/reliability.md come from.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as admin_pb2_grpc
from ratelimitd.app import App
from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.config import config_from_texts
from ratelimitd.settings import Settings

FIGURES_ENV = "RATELIMITD_RELIABILITY_FIGURES"
ADMIN_TOKEN = "reliability-token"


@dataclass
class Running:
    """One in-process service and a channel to it."""

    app: App
    channel: grpc.aio.Channel
    stub: rls_pb2_grpc.RateLimitServiceStub
    admin: admin_pb2_grpc.RateLimitAdminStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"


Serve = Callable[..., Coroutine[Any, Any, Running]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`await serve(rules, backend=..., **settings)`: a started App on free loopback ports."""
    started: list[Running] = []

    async def start(rules: str, backend: Backend | None = None, **settings: Any) -> Running:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "config_poll_s": 0,
            "admin_token": ADMIN_TOKEN,
        }
        options.update(settings)
        app = App(
            Settings(**options),
            config=config_from_texts([("rules.yaml", textwrap.dedent(rules))]),
            backend=backend if backend is not None else MemoryBackend(),
        )
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        running = Running(
            app,
            channel,
            rls_pb2_grpc.RateLimitServiceStub(channel),
            admin_pb2_grpc.RateLimitAdminStub(channel),  # type: ignore[no-untyped-call]
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close()
        await running.app.stop(grace=0)


Record = Callable[..., None]


@pytest.fixture
def figures(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Record:
    """`figures(name=value, ...)`: keeps the measured figures of this test."""

    def record(**values: object) -> None:
        for name, value in values.items():
            record_property(name, value)
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"test": request.node.nodeid, **values}, default=str) + "\n")

    return record
