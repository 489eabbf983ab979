"""The composition root: settings → config → backend → limiter → servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ratelimitd import metrics
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as admin_pb2_grpc
from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis import RedisBackend
from ratelimitd.backends.redis_client import RedisOptions
from ratelimitd.clock import Clock
from ratelimitd.config import RateLimitConfig, load_config
from ratelimitd.limiter import Limiter, LimiterOptions
from ratelimitd.server.admin_service import SERVICE_NAME as ADMIN_SERVICE
from ratelimitd.server.admin_service import AdminServicer
from ratelimitd.server.grpc_service import RateLimitServicer
from ratelimitd.server.http import HttpServer, Response, text
from ratelimitd.settings import Settings

log = logging.getLogger("ratelimitd")

ENVOY_SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
HEALTH_SERVICES = ("", ENVOY_SERVICE, ADMIN_SERVICE)


def make_backend(settings: Settings, clock: Clock | None = None) -> Backend:
    """Redis when a URL is set, else memory. A `clock` is for tests only."""
    if settings.redis_url:
        options = RedisOptions(
            url=settings.redis_url,
            timeout_s=settings.redis_timeout_ms / 1000,
            tls_ca=settings.redis_tls_ca,
            tls_cert=settings.redis_tls_cert,
            tls_key=settings.redis_tls_key,
        )
        return RedisBackend(options, clock=clock, local_cache=settings.local_cache)
    return MemoryBackend(clock)


class App:
    """One running service. `start()` binds every listener; `stop()` releases them."""

    def __init__(
        self,
        settings: Settings,
        config: RateLimitConfig | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.config = config if config is not None else load_config([settings.config])
        self.backend = backend if backend is not None else make_backend(settings, clock)
        self.limiter = Limiter(
            self.config,
            self.backend,
            LimiterOptions(
                key_prefix=settings.key_prefix,
                shadow_mode=settings.shadow_mode,
                backend_failure=settings.backend_failure,
            ),
        )
        self.health = health.aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.http_server = HttpServer(
            {("GET", "/healthcheck"): self._healthcheck, ("GET", "/metrics"): self._metrics}
        )
        self.grpc_port = 0
        self.http_port = 0
        self.ready = False
        self.backend_healthy: bool | None = None
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitServicer(self.limiter), server)
        admin_pb2_grpc.add_RateLimitAdminServicer_to_server(  # type: ignore[no-untyped-call]
            AdminServicer(self.limiter, settings.read_admin_token), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (ENVOY_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.grpc_port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}")
        await server.start()
        self.grpc_server = server
        self.http_port = await self.http_server.start(settings.host, settings.http_port)
        self.ready = True
        await self._check_backend()
        self._monitor = asyncio.get_running_loop().create_task(self._watch_backend())
        if not settings.read_admin_token():
            log.warning(
                "no RATELIMITD_ADMIN_TOKEN or RATELIMITD_ADMIN_TOKEN_FILE: the admin API refuses every call"
            )
        for line in self.config.summary():
            log.info("loaded %s", line)
        log.info(
            "ratelimitd listening on %s (gRPC %d, HTTP %d), backend %s",
            settings.host,
            self.grpc_port,
            self.http_port,
            self.backend.description,
        )

    async def _check_backend(self) -> None:
        """Sets gRPC health from the backend's answer, logging each change."""
        healthy = self.ready and await self.backend.ping()
        if healthy != self.backend_healthy:
            log_at = log.info if healthy else log.warning
            log_at(
                "backend %s is %s",
                self.backend.description,
                "reachable" if healthy else "unreachable",
            )
        self.backend_healthy = healthy
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in HEALTH_SERVICES:
            await self.health.set(service, status)

    async def _watch_backend(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self._check_backend()
            except Exception:  # the watcher must outlive any one bad check
                log.exception("health check failed")

    async def stop(self, grace: float = 5.0) -> None:
        self.ready = False
        if self._monitor is not None:
            self._monitor.cancel()
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        await self.http_server.stop()
        await self.backend.close()
        log.info("ratelimitd stopped")

    async def _metrics(self, _: bytes) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition()

    async def _healthcheck(self, _: bytes) -> Response:
        if self.ready and await self.backend.ping():
            return text(200, "OK")
        return text(503, "NOT READY")


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT."""
    app = App(settings)
    await app.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await app.stop()
