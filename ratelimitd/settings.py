"""Every setting in one frozen dataclass; each field has a default and an env variable."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ratelimitd.errors import ConfigError
from ratelimitd.loops import unknown_loop
from ratelimitd.model import BACKEND_FAILURE_MODES

ENV_PREFIX = "RATELIMITD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
GRPC_SERVERS = ("native", "grpcio")


@dataclass(frozen=True)
class Settings:
    config: str = "/etc/ratelimitd/config"
    host: str = "0.0.0.0"
    grpc_port: int = 8081
    http_port: int = 8080
    shadow_mode: bool = False
    quota_mode: bool = False  # every rule in quota mode (upstream's QUOTA_MODE)
    response_dynamic_metadata: bool = False  # upstream's RESPONSE_DYNAMIC_METADATA
    key_prefix: str = "ratelimitd:"
    log_level: str = "info"
    redis_url: str = ""
    redis_timeout_ms: int = 100
    redis_batch_delay_us: int = 500
    redis_tls_ca: str = ""
    redis_tls_cert: str = ""
    redis_tls_key: str = ""
    backend_failure: str = "error"
    local_replicas: int = 1  # replicas sharing the limits, for the `local` failure mode
    local_cache: bool = False
    admin_token: str = ""
    admin_token_file: str = ""
    health_interval_s: float = 1.0
    log_format: str = "console"
    config_poll_s: float = 1.0
    near_limit_ratio: float = 0.8
    detailed_metric_max_values: int = 100
    shutdown_grace_s: float = 10.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    workers: int = 1
    event_loop: str = "auto"
    grpc_server: str = "native"
    reuse_port: bool = False  # set for worker processes sharing the ports
    supervisor_pid: int = 0  # set for worker processes: they stop when it is gone
    # set for worker processes: the listening sockets their supervisor passed down (-1: none)
    grpc_fd: int = -1
    http_fd: int = -1

    def read_admin_token(self) -> str:
        """The admin token, read again each time so a rotated token file takes effect."""
        if self.admin_token_file:
            try:
                with open(self.admin_token_file, encoding="utf-8") as token_file:
                    return token_file.read().strip()
            except OSError:
                return ""  # unreadable: the admin API refuses every call
        return self.admin_token

    max_message_bytes: int = 4 * 1024 * 1024
    max_descriptors: int = 256
    max_entries: int = 32
    max_key_length: int = 1024
    max_value_length: int = 4096
    # what one gRPC client may hold (transport/h2/limits.py has the rest)
    max_connections: int = 1024
    max_concurrent_streams: int = 256
    idle_timeout_s: float = 300.0
    request_body_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `RATELIMITD_*` variables, then `overrides` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _convert(field.name, field.type, raw)
        values.update({name: value for name, value in overrides.items() if value is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if self.backend_failure not in BACKEND_FAILURE_MODES:
            problems.append(
                f"RATELIMITD_BACKEND_FAILURE: expected one of {', '.join(BACKEND_FAILURE_MODES)}, "
                f"got '{self.backend_failure}'"
            )
        if self.log_format not in ("json", "console"):
            problems.append(
                f"RATELIMITD_LOG_FORMAT: expected json or console, got '{self.log_format}'"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("RATELIMITD_TLS_CERT and RATELIMITD_TLS_KEY: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            problems.append(
                "RATELIMITD_TLS_CLIENT_CA: needs RATELIMITD_TLS_CERT and RATELIMITD_TLS_KEY"
            )
        if self.grpc_server not in GRPC_SERVERS:
            problems.append(
                f"RATELIMITD_GRPC_SERVER: expected one of {', '.join(GRPC_SERVERS)}, "
                f"got '{self.grpc_server}'"
            )
        loop_problem = unknown_loop(self.event_loop)
        if loop_problem:
            problems.append(loop_problem)
        problems.extend(self._out_of_range())
        if self.workers > 1 and not self.redis_url:
            problems.append(
                "RATELIMITD_WORKERS: more than one worker needs RATELIMITD_REDIS_URL; "
                "the memory backend's counters would not be shared between workers"
            )
        if problems:
            raise ConfigError(problems)

    def _out_of_range(self) -> list[str]:
        """A line for each numeric setting outside its `RANGES`."""
        problems = []
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            if not allowed.holds(value):
                problems.append(f"{setting_name(name)}: must be {allowed.text}, got {value}")
        return problems


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: `low` (or above it) up to `high`, finite."""

    low: float
    high: float = math.inf
    above: bool = False  # `low` itself not allowed
    text: str = ""

    def holds(self, value: float) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.above else value >= self.low


PORT = Range(0, 65535, text="a port from 1 to 65535 (0, any free port, is for tests)")
POSITIVE = Range(0, above=True, text="above 0")
NOT_NEGATIVE = Range(0, text="0 or more")
AT_LEAST_ONE = Range(1, text="at least 1")
RANGES = {
    "grpc_port": PORT,
    "http_port": PORT,
    "redis_timeout_ms": POSITIVE,
    "redis_batch_delay_us": Range(0, 1_000_000, text="from 0 to 1000000 (one second)"),
    "health_interval_s": POSITIVE,
    "config_poll_s": Range(0, text="0 or more (0: no file watch)"),
    "near_limit_ratio": Range(0, 1, above=True, text="above 0 and at most 1"),
    "detailed_metric_max_values": NOT_NEGATIVE,
    "shutdown_grace_s": NOT_NEGATIVE,
    "workers": Range(1, 1024, text="from 1 to 1024"),
    "local_replicas": AT_LEAST_ONE,
    "max_message_bytes": Range(1, 2**31 - 1, text="from 1 to 2147483647"),
    "max_descriptors": AT_LEAST_ONE,
    "max_entries": AT_LEAST_ONE,
    "max_key_length": AT_LEAST_ONE,
    "max_value_length": AT_LEAST_ONE,
    "max_connections": AT_LEAST_ONE,
    "max_concurrent_streams": Range(1, 2**31 - 1, text="from 1 to 2147483647"),
    "idle_timeout_s": POSITIVE,
    "request_body_timeout_s": POSITIVE,
}
COMMAND_LINE_FLAGS = ("config", "host", "grpc_port", "http_port", "redis_url", "workers")


def setting_name(field: str) -> str:
    """How a user sets `field`: its variable, and its `serve` flag where it has one."""
    variable = ENV_PREFIX + field.upper()
    if field in COMMAND_LINE_FLAGS:
        return f"{variable} (--{field.replace('_', '-')})"
    return variable


def _convert(name: str, kind: Any, raw: str) -> Any:
    variable = ENV_PREFIX + name.upper()
    if kind in (bool, "bool"):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError([f"{variable}: expected true or false, got '{raw}'"])
    if kind in (int, "int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError([f"{variable}: expected a whole number, got '{raw}'"]) from None
    if kind in (float, "float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError([f"{variable}: expected a number, got '{raw}'"]) from None
    return raw
