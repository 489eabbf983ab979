"""Why the service is not ready: said by `/healthcheck` and by a warning at startup, repeated
at most every 30 s while it lasts, naming the Redis URL with its password hidden."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ratelimitd import app as app_module
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from tests.integration.conftest import StartServer
from tests.servers.redis import RedisServer, free_port
from tests.servers.service import ServiceProcess

RULES = """
domain: ready
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 10}
"""


def healthcheck(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_unreachable_redis_is_named_at_startup_and_by_the_healthcheck(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()  # nothing listens there yet
    url = f"redis://:s3cret@127.0.0.1:{port}"
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": url,
        "RATELIMITD_HEALTH_INTERVAL_S": "0.2",
    }
    service = ServiceProcess(rules, env).start(wait_healthy=False)
    try:
        status, body = healthcheck(service.http_port)
        assert status == 503
        assert body == (
            f"NOT READY: backend redis://:***@127.0.0.1:{port}: "
            "Redis unreachable: cannot connect: connection refused\n"
        )
        log = service.log()
        assert "backend unreachable" in log
        assert f"redis://:***@127.0.0.1:{port}" in log
        assert "connection refused" in log
        assert "s3cret" not in log and "s3cret" not in body
        # Redis comes: ready, and the log says so
        with RedisServer(port=port) as redis_server:
            redis_server.client().config_set("requirepass", "s3cret")
            service.wait_health(200)
            assert healthcheck(service.http_port) == (200, "OK")
            assert "backend reachable" in service.log()
    finally:
        service.stop()


async def test_the_warning_repeats_only_while_it_lasts_and_every_30_s(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    backend = RedisBackend(RedisOptions(url=f"redis://127.0.0.1:{port}", timeout_s=1.0))
    with caplog.at_level(logging.INFO):
        app = await start_server(RULES, backend=backend, health_interval_s=3600)

        def events(name: str) -> int:
            return sum(name in record.getMessage() for record in caplog.records)

        assert events("backend unreachable") == 1  # at startup
        assert app.not_ready_reason() == (
            f"backend redis://127.0.0.1:{port}: Redis unreachable: cannot connect: connection refused"
        )
        for _ in range(5):  # checks within 30 s of the warning: no new line
            await app._check_backend()
        assert events("backend unreachable") == 1
        app._backend_warned_at -= app_module.BACKEND_WARNING_EVERY_S  # 30 s later
        await app._check_backend()
        await app._check_backend()
        assert events("backend unreachable") == 2
        with RedisServer(port=port):
            await app._check_backend()
            assert app.not_ready_reason() is None
            assert events("backend reachable") == 1
