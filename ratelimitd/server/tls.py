"""TLS for the gRPC listener, with optional client-certificate verification (mTLS).

The certificate files are looked at again on every new connection (a few `stat` calls) and
re-read when they changed, so a renewed certificate is served without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from ratelimitd.errors import ConfigError
from ratelimitd.logs import get_logger

log = get_logger(__name__)


class ReloadingCredentials:
    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.paths = [Path(p) for p in (cert, key, client_ca) if p]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp = self._stamps()
        self._initial = self._configuration()

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        try:
            return tuple((s.st_mtime_ns, s.st_size) for s in (os.stat(p) for p in self.paths))
        except OSError:
            return ()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        try:
            chain = Path(self.cert).read_bytes()
            key = Path(self.key).read_bytes()
            roots = Path(self.client_ca).read_bytes() if self.client_ca else None
        except OSError as exc:
            raise ConfigError(
                [f"RATELIMITD_TLS_CERT/_KEY/_CLIENT_CA: cannot read {exc.filename}: {exc.strerror}"]
            ) from exc
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC calls this on each handshake: a new configuration, or None to keep the old."""
        stamp = self._stamps()
        if not stamp or stamp == self._stamp:
            return None
        try:
            configuration = self._configuration()
        except ConfigError as exc:
            log.error(
                "TLS files changed but cannot be read; keeping the old ones", errors=exc.errors
            )
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", cert=self.cert)
        return configuration

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=bool(self.client_ca)
        )
