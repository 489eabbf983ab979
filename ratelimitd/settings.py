"""Every setting in one frozen dataclass; each field has a default and an env variable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ratelimitd.errors import ConfigError
from ratelimitd.loops import unknown_loop

ENV_PREFIX = "RATELIMITD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
BACKEND_FAILURE_MODES = ("error", "allow", "deny")
GRPC_SERVERS = ("native", "grpcio")


@dataclass(frozen=True)
class Settings:
    config: str = "/etc/ratelimitd/config"
    host: str = "0.0.0.0"
    grpc_port: int = 8081
    http_port: int = 8080
    shadow_mode: bool = False
    key_prefix: str = "ratelimitd:"
    log_level: str = "info"
    redis_url: str = ""
    redis_timeout_ms: int = 100
    redis_batch_delay_us: int = 500
    redis_tls_ca: str = ""
    redis_tls_cert: str = ""
    redis_tls_key: str = ""
    backend_failure: str = "error"
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
        if self.workers < 1:
            problems.append(f"RATELIMITD_WORKERS: must be at least 1, got {self.workers}")
        if self.workers > 1 and not self.redis_url:
            problems.append(
                "RATELIMITD_WORKERS: more than one worker needs RATELIMITD_REDIS_URL; "
                "the memory backend's counters would not be shared between workers"
            )
        if not 0 < self.near_limit_ratio <= 1:
            problems.append(
                f"RATELIMITD_NEAR_LIMIT_RATIO: must be in (0, 1], got {self.near_limit_ratio}"
            )
        if self.redis_timeout_ms <= 0:
            problems.append(
                f"RATELIMITD_REDIS_TIMEOUT_MS: must be positive, got {self.redis_timeout_ms}"
            )
        if problems:
            raise ConfigError(problems)


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
