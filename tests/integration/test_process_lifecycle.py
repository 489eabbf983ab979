"""The service as a real process: SIGHUP reload, SIGTERM with calls in flight, TLS, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ratelimitd.errors import ConfigError
from ratelimitd.settings import Settings
from tests.integration.test_grpc_server import OK, OVER, rl_request
from tests.servers.certs import make_certs
from tests.servers.redis import RedisServer, free_port
from tests.servers.service import ServiceProcess

RULES = """
domain: life
descriptors:
  - key: ip
    rate_limit: {unit: year, requests_per_unit: 1000}
  - key: tight
    rate_limit: {unit: year, requests_per_unit: 2}
"""


def write_rules(folder: Path, text: str = RULES) -> Path:
    path = folder / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


async def check(target: str, entries: list[tuple[str, str]], **kwargs: object) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
            rl_request(entries, domain="life"), timeout=10, **kwargs
        )
    return int(reply.overall_code)


async def test_sighup_reloads_and_a_bad_file_keeps_the_old_rules(tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    # file watching off: only SIGHUP reloads here
    with ServiceProcess(rules, {"RATELIMITD_CONFIG_POLL_S": "0"}) as service:
        assert service.process is not None
        assert [await check(service.target, [("tight", "a")]) for _ in range(3)] == [OK, OK, OVER]
        rules.write_text(
            textwrap.dedent(RULES).replace("requests_per_unit: 2", "requests_per_unit: 5")
        )
        assert await check(service.target, [("tight", "a")]) == OVER  # not reloaded yet
        service.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: check(service.target, [("tight", "a")]), OK)
        rules.write_text("domain: life\ndescriptors: [oops\n")
        service.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await check(service.target, [("ip", "still-served")]) == OK
        assert "config reload failed, keeping the old config" in service.log()
        assert "error loading config file" in service.log()


async def wait_until(probe, expected, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await probe() == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never became {expected}")


async def test_sigterm_lets_calls_in_flight_finish(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": redis_server.url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "5000",
        "RATELIMITD_SHUTDOWN_GRACE_S": "5",
    }
    service = ServiceProcess(write_rules(tmp_path), env).start()
    assert service.process is not None and redis_server.process is not None
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        await stub.ShouldRateLimit(rl_request([("ip", "warm")], domain="life"))
        os.kill(redis_server.process.pid, signal.SIGSTOP)  # calls pile up, in flight
        try:
            calls = [
                asyncio.ensure_future(
                    stub.ShouldRateLimit(rl_request([("ip", f"f{n}")], domain="life"), timeout=10)
                )
                for n in range(50)
            ]
            await asyncio.sleep(0.3)
            service.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert await asyncio.to_thread(service.health) in (503, None)  # draining: unhealthy
            os.kill(redis_server.process.pid, signal.SIGCONT)
            replies = await asyncio.gather(*calls)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
    assert [r.overall_code for r in replies] == [OK] * 50  # none failed
    assert await asyncio.to_thread(service.process.wait, 10) == 0
    log = service.log()
    assert "shutting down" in log and "ratelimitd stopped" in log
    service.stop()
    # new calls are refused once it is gone
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(service.target, [("ip", "late")])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def tls_check(
    target: str, ca: Path, cert: Path | None = None, key: Path | None = None
) -> int:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    async with grpc.aio.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        reply = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
            rl_request([("ip", "tls")], domain="life"), timeout=5
        )
    return int(reply.overall_code)


async def test_mtls_with_and_without_a_client_certificate_and_cert_reload(tmp_path: Path) -> None:
    first = make_certs(tmp_path / "first")
    env: dict[str, str | None] = {
        "RATELIMITD_TLS_CERT": str(first.server_cert),
        "RATELIMITD_TLS_KEY": str(first.server_key),
        "RATELIMITD_TLS_CLIENT_CA": str(first.ca),
    }
    with ServiceProcess(write_rules(tmp_path), env) as service:
        assert await tls_check(service.target, first.ca, first.client_cert, first.client_key) == OK
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tls_check(service.target, first.ca)  # no client certificate
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError):
            await check(service.target, [("ip", "plaintext")])  # plaintext is refused
        # renewed files from another CA are picked up without a restart
        second = make_certs(tmp_path / "second")
        for name in ("server_cert", "server_key", "ca"):
            Path(getattr(first, name)).write_bytes(Path(getattr(second, name)).read_bytes())
        assert (
            await tls_check(service.target, second.ca, second.client_cert, second.client_key) == OK
        )


def test_memory_backend_refuses_several_workers(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ratelimitd",
            "serve",
            "--config",
            str(write_rules(tmp_path)),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "RATELIMITD_REDIS_URL"},
    )
    assert result.returncode == 2
    assert "more than one worker needs RATELIMITD_REDIS_URL" in result.stderr


async def test_two_workers_share_the_port_and_their_metrics_sum(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env: dict[str, str | None] = {
        "RATELIMITD_REDIS_URL": redis_server.url,
        "RATELIMITD_REDIS_TIMEOUT_MS": "5000",
        "RATELIMITD_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": None,  # the supervisor makes its own, under TMPDIR
        "TMPDIR": str(tmp_path),
    }
    service = ServiceProcess(write_rules(tmp_path), env)
    with service:
        deadline = time.monotonic() + 20
        while service.log().count("ratelimitd listening") < 2:  # both workers are up
            assert time.monotonic() < deadline, service.log()
            await asyncio.sleep(0.05)
        (metrics_dir,) = tmp_path.glob("ratelimitd-metrics-*")
        # each new connection may land on either worker (SO_REUSEPORT)
        for n in range(40):
            assert await check(service.target, [("ip", f"w{n % 4}")]) == OK
        pids = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
        assert len(pids) == 2, f"both workers served: {pids}"

        def total_hits() -> float:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{service.http_port}/metrics", timeout=5
            ) as reply:
                text = reply.read().decode()
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "ratelimitd_total_hits_total"
                and sample.labels.get("domain") == "life"
            )

        # each worker hands its counts to the shared files within a second (metrics.Tally)
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(total_hits) != 40.0:
            assert time.monotonic() < deadline, "the workers' counts never added up to 40"
            await asyncio.sleep(0.2)
        # from then on every scrape, whichever worker answers it, sums both
        assert [await asyncio.to_thread(total_hits) for _ in range(6)] == [40.0] * 6
    assert service.process is None


def test_free_port_is_free() -> None:
    assert free_port() > 0


@pytest.mark.parametrize(
    "variable, choice, logged",
    [
        ("RATELIMITD_EVENT_LOOP", None, "event_loop=uvloop"),
        ("RATELIMITD_EVENT_LOOP", "asyncio", "event_loop=asyncio"),
        ("RATELIMITD_GRPC_SERVER", None, "grpc_server=native"),
        ("RATELIMITD_GRPC_SERVER", "grpcio", "grpc_server=grpcio"),
    ],
)
async def test_serves_on_the_default_or_the_chosen_loop_and_grpc_server(
    tmp_path: Path, redis_server: RedisServer, variable: str, choice: str | None, logged: str
) -> None:
    env = {"RATELIMITD_REDIS_URL": redis_server.url, variable: choice}
    with ServiceProcess(write_rules(tmp_path), env) as service:
        codes = [await check(service.target, [("tight", logged)]) for _ in range(3)]
        assert codes == [OK, OK, OVER]
        assert logged in service.log()


def test_an_unknown_grpc_server_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RATELIMITD_GRPC_SERVER": "tonic"})
    assert caught.value.errors == [
        "RATELIMITD_GRPC_SERVER: expected one of native, grpcio, got 'tonic'"
    ]


def test_an_unknown_event_loop_stops_startup_with_the_reason(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ratelimitd", "serve", "--config", str(write_rules(tmp_path))],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "RATELIMITD_EVENT_LOOP": "tokio"},
    )
    assert result.returncode == 2
    assert "RATELIMITD_EVENT_LOOP: expected one of auto, uvloop, asyncio, got 'tokio'" in (
        result.stderr
    )
