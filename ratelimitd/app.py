"""The composition root: settings → config → backend → limiter → servers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import math
import signal
import time

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ratelimitd import metrics
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb2
from ratelimitd.backends.base import Backend
from ratelimitd.backends.memory import MemoryBackend
from ratelimitd.backends.redis.backend import RedisBackend
from ratelimitd.backends.redis.client import RedisOptions
from ratelimitd.clock import Clock
from ratelimitd.config import RateLimitConfig, load_config
from ratelimitd.config.reloader import ConfigReloader
from ratelimitd.errors import BackendError
from ratelimitd.leases import Leases
from ratelimitd.limiter import Bounds, Limiter, LimiterOptions
from ratelimitd.logs import get_logger
from ratelimitd.loops import loop_name
from ratelimitd.reservations import Reservations
from ratelimitd.services.admin_service import SERVICE_NAME as ADMIN_SERVICE
from ratelimitd.services.admin_service import AdminServicer
from ratelimitd.services.batch_service import SERVICE_NAME as BATCH_SERVICE
from ratelimitd.services.batch_service import BatchServicer
from ratelimitd.services.encode import ResponseEncoder
from ratelimitd.services.grpc_service import RateLimitServicer
from ratelimitd.services.handlers import register_service
from ratelimitd.services.http_api import routes
from ratelimitd.services.prepared import PreparedRequests
from ratelimitd.services.reservations_service import SERVICE_NAME as RESERVATIONS_SERVICE
from ratelimitd.services.reservations_service import ReservationsServicer
from ratelimitd.settings import Settings
from ratelimitd.transport.h2.limits import DEFAULT_LIMITS, Limits
from ratelimitd.transport.h2.server import Http2Server
from ratelimitd.transport.http1 import HttpServer
from ratelimitd.transport.listen import inherited_socket
from ratelimitd.transport.tls import ReloadingCredentials
from ratelimitd.workers import watch_supervisor

log = get_logger("ratelimitd")

ENVOY_SERVICE = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name
HEALTH_SERVICES = ("", ENVOY_SERVICE, BATCH_SERVICE, ADMIN_SERVICE)
METRICS_FLUSH_S = 1.0
BACKEND_WARNING_EVERY_S = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def make_backend(settings: Settings, clock: Clock | None = None) -> Backend:
    """Redis when a URL is set, else memory. A `clock` is for tests only."""
    if settings.redis_url:
        options = RedisOptions(
            url=settings.redis_url,
            timeout_s=settings.redis_timeout_ms / 1000,
            batch_delay_s=settings.redis_batch_delay_us / 1_000_000,
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
        if config is None:
            config = load_config([settings.config])
            metrics.CONFIG_LOADS.labels("success").inc()
        metrics.set_config_hash(config.content_hash)
        self.backend = backend if backend is not None else make_backend(settings, clock)
        self.limiter = Limiter(
            config,
            self.backend,
            LimiterOptions(
                key_prefix=settings.key_prefix,
                shadow_mode=settings.shadow_mode,
                quota_mode=settings.quota_mode,
                response_dynamic_metadata=settings.response_dynamic_metadata,
                backend_failure=settings.backend_failure,
                local_replicas=settings.local_replicas,
                near_limit_ratio=settings.near_limit_ratio,
                detailed_metric_max_values=settings.detailed_metric_max_values,
                bounds=Bounds(
                    max_descriptors=settings.max_descriptors,
                    max_entries=settings.max_entries,
                    max_key_length=settings.max_key_length,
                    max_value_length=settings.max_value_length,
                ),
            ),
        )
        self.prepared = PreparedRequests(self.limiter)  # shared by ShouldRateLimit and batches
        self.encoder = ResponseEncoder()
        self.reloader = ConfigReloader([settings.config], self.apply_config, settings.config_poll_s)
        self.health = health.aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | Http2Server | None = None
        self.http_server = HttpServer(routes(self.limiter, self.not_ready_reason))
        self.grpc_port = 0
        self.http_port = 0
        self.ready = False
        self.stopping = False
        self.backend_problem: str | None = "not checked yet"  # None while the backend answers
        self._backend_warned_at = -math.inf
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def config(self) -> RateLimitConfig:
        return self.limiter.config

    def apply_config(self, config: RateLimitConfig) -> None:
        """Swaps the config in one assignment: a call in flight keeps the one it started with."""
        self.limiter.config = config
        metrics.set_config_hash(config.content_hash)

    def healthy(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why `/healthcheck` answers 503, or None when ready."""
        if self.stopping:
            return "shutting down"
        if not self.ready:
            return "starting"
        if self.backend_problem is not None:
            return f"backend {self.backend.description}: {self.backend_problem}"
        return None

    async def start(self) -> None:
        settings = self.settings
        server = self._new_grpc_server()
        # bytes both ways: the servicers parse and encode themselves (grpc_service.py)
        register_service(
            server,
            ENVOY_SERVICE,
            RateLimitServicer(self.limiter, self.prepared, self.encoder),
            {"ShouldRateLimit": (None, None)},
        )
        register_service(
            server,
            BATCH_SERVICE,
            BatchServicer(self.limiter, self.prepared, self.encoder),
            {"ShouldRateLimitBatch": (admin_pb2.ShouldRateLimitBatchRequest, None)},
        )
        register_service(
            server,
            ADMIN_SERVICE,
            AdminServicer(self.limiter, settings.read_admin_token),
            {
                "Reset": (admin_pb2.ResetRequest, admin_pb2.ResetResponse),
                "Peek": (admin_pb2.PeekRequest, admin_pb2.PeekResponse),
                "GetConfig": (admin_pb2.GetConfigRequest, admin_pb2.GetConfigResponse),
            },
        )
        register_service(
            server,
            RESERVATIONS_SERVICE,
            ReservationsServicer(Reservations(self.limiter), Leases(self.limiter)),
            {
                "Reserve": (admin_pb2.ReserveRequest, admin_pb2.ReserveResponse),
                "Commit": (admin_pb2.CommitRequest, admin_pb2.SettleResponse),
                "Refund": (admin_pb2.RefundRequest, admin_pb2.SettleResponse),
                "Acquire": (admin_pb2.AcquireRequest, admin_pb2.AcquireResponse),
                "Release": (admin_pb2.ReleaseRequest, admin_pb2.ReleaseResponse),
            },
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                (
                    ENVOY_SERVICE,
                    BATCH_SERVICE,
                    ADMIN_SERVICE,
                    RESERVATIONS_SERVICE,
                    health.SERVICE_NAME,
                    reflection.SERVICE_NAME,
                )
            ),
            server,
        )
        self.grpc_port = await self._listen_grpc(server)
        self.grpc_server = server
        self.http_port = await self.http_server.start(
            settings.host,
            settings.http_port,
            reuse_port=settings.reuse_port,
            sock=inherited_socket(settings.http_fd),
        )
        self.ready = True
        await self._check_backend()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_backend()),
            loop.create_task(self._flush_metrics()),
        ]
        if settings.config_poll_s > 0:
            self._tasks.append(loop.create_task(self.reloader.watch()))
        if not settings.read_admin_token():
            log.warning(
                "no RATELIMITD_ADMIN_TOKEN or RATELIMITD_ADMIN_TOKEN_FILE: the admin API refuses every call"
            )
        for line in self.config.summary():
            log.info("config loaded", summary=line, content_hash=self.config.content_hash)
        log.info(
            "ratelimitd listening",
            host=settings.host,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            tls=bool(settings.tls_cert),
            mtls=bool(settings.tls_client_ca),
            backend=self.backend.description,
            event_loop=loop_name(loop),
            grpc_server=settings.grpc_server,
        )

    def _new_grpc_server(self) -> grpc.aio.Server | Http2Server:
        settings = self.settings
        if settings.grpc_server == "native":
            return Http2Server(settings.max_message_bytes, h2_limits(settings))
        return grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # the same limits as the native server's, where grpcio has them; not
                # grpc.max_concurrent_streams: grpc-core enforces it before the client has
                # seen it, so a first burst of calls on a new channel fails UNAVAILABLE
                ("grpc.max_connection_idle_ms", int(settings.idle_timeout_s * 1000)),
                ("grpc.max_metadata_size", DEFAULT_LIMITS.max_header_list),
                # several worker processes share the port; a lone process must not
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
                # let long-lived client channels (Envoy's, ratelimitd_client's) keep alive
                # with pings every 10 s or more, even between calls, without a GOAWAY
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ]
        )

    async def _listen_grpc(self, server: grpc.aio.Server | Http2Server) -> int:
        """Binds and starts the gRPC server; returns its port."""
        settings = self.settings
        credentials = None
        if settings.tls_cert:
            credentials = ReloadingCredentials(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca
            )
        if isinstance(server, Http2Server):
            return await server.start(
                settings.host,
                settings.grpc_port,
                reuse_port=settings.reuse_port,
                sock=inherited_socket(settings.grpc_fd),
                ssl_context=credentials.ssl_context() if credentials else None,
            )
        address = f"{settings.host}:{settings.grpc_port}"
        if credentials:
            port = server.add_secure_port(address, credentials.server_credentials())
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        return int(port)

    async def _check_backend(self) -> None:
        """Sets gRPC health from the backend's answer. A warning says why the backend does not
        answer when that starts, and again every `BACKEND_WARNING_EVERY_S` while it lasts."""
        try:
            await self.backend.ping()
            problem = None
        except BackendError as exc:
            problem = str(exc)
        now = time.monotonic()
        if problem is None and self.backend_problem is not None:
            log.info("backend reachable", backend=self.backend.description)
        elif problem is not None and (
            self.backend_problem is None or now - self._backend_warned_at >= BACKEND_WARNING_EVERY_S
        ):
            log.warning("backend unreachable", backend=self.backend.description, error=problem)
            self._backend_warned_at = now
        self.backend_problem = problem
        serving = SERVING if self.healthy() else NOT_SERVING
        for service in HEALTH_SERVICES:
            await self.health.set(service, serving)

    async def _watch_backend(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self._check_backend()
            except Exception:  # the watcher must outlive any one bad check
                log.exception("health check failed")

    @staticmethod
    async def _flush_metrics() -> None:
        """Hands the hot path's tallies to prometheus-client every second (see metrics.Tally)."""
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            metrics.flush_tallies()

    async def stop(self, grace: float | None = None) -> None:
        """Turns unhealthy, refuses new calls, lets calls in flight finish within `grace`."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for service in HEALTH_SERVICES:
            await self.health.set(service, NOT_SERVING)
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        await self.http_server.stop()
        await self.backend.close()
        metrics.flush_tallies()
        log.info("ratelimitd stopped")


def h2_limits(settings: Settings) -> Limits:
    """The native server's limits: the defaults, with those that are settings."""
    return dataclasses.replace(
        DEFAULT_LIMITS,
        max_connections=settings.max_connections,
        max_concurrent_streams=settings.max_concurrent_streams,
        idle_timeout_s=settings.idle_timeout_s,
        request_body_timeout_s=settings.request_body_timeout_s,
    )


FULL_COLLECTION_EVERY = 1000  # young collections between full ones (Python's default: 10)


def tune_gc() -> None:
    """Keeps full garbage collections off the hot path.

    A full collection walks every tracked object, and a running service holds many for good
    (modules, the config, the memo of prepared requests): measured here, each one paused the
    event loop for 65-80 ms, several times a minute under load, which is what a p99.9 sees.
    Freezing what exists once the service is up takes it out of every later collection; full
    collections then wait for 1,000 young ones instead of 10 (Python still requires a quarter
    of the old objects to be new since the last one), so they come minutes apart. Objects
    die by reference counting as before; only garbage cycles wait longer. With both: no full
    collection in 10,000 prefilled bodies and 15 s of load, and 10 % more calls/s.
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT; SIGHUP reloads the config."""
    app = App(settings)
    await app.start()
    tune_gc()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, lambda: app.reloader.reload("SIGHUP"))
    watcher = (  # a worker of `--workers N` stops when its supervisor is gone
        loop.create_task(watch_supervisor(settings.supervisor_pid, stopping.set))
        if settings.supervisor_pid
        else None
    )
    await stopping.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("shutting down", grace_s=settings.shutdown_grace_s)
    await app.stop()
