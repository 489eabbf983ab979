"""TLS for the gRPC listener, with optional client-certificate verification (mTLS).

The certificate files are looked at again on every new connection (a few `stat` calls) and
re-read when they changed, so a renewed certificate is served without a restart. grpcio's
server asks through `fetch`; ratelimitd's own server (transport/h2) through the SSL context's
server-name callback, which OpenSSL calls on every handshake, with or without a name.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from ratelimitd.errors import ConfigError
from ratelimitd.logs import get_logger

log = get_logger(__name__)
Built = TypeVar("Built")


class ReloadingCredentials:
    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.paths = [Path(p) for p in (cert, key, client_ca) if p]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp = self._stamps()
        self._initial = self._configuration()
        self._ssl_context: ssl.SSLContext | None = None

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
            raise _unreadable(exc) from exc
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def _changed(self, build: Callable[[], Built]) -> Built | None:
        """`build()` when the files changed since last time (and can be read), else None."""
        stamp = self._stamps()
        if not stamp or stamp == self._stamp:
            return None
        try:
            built = build()
        except ConfigError as exc:
            log.error(
                "TLS files changed but cannot be read; keeping the old ones", errors=exc.errors
            )
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", cert=self.cert)
        return built

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC calls this on each handshake: a new configuration, or None to keep the old."""
        return self._changed(self._configuration)

    def ssl_context(self) -> ssl.SSLContext:
        """For ratelimitd's own server: HTTP/2 over TLS 1.2 or later, the files re-read when
        they change."""
        if self._ssl_context is None:
            self._ssl_context = self._new_ssl_context()
        return self._ssl_context

    def _new_ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["h2"])
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca:
                context.load_verify_locations(cafile=self.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except OSError as exc:
            raise _unreadable(exc) from exc
        except ssl.SSLError as exc:
            raise ConfigError([f"RATELIMITD_TLS_CERT/_KEY/_CLIENT_CA: {exc}"]) from exc
        context.sni_callback = self._on_hello
        return context

    def _on_hello(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        fresh = self._changed(self._new_ssl_context)
        if fresh is not None:
            self._ssl_context = fresh
        if self._ssl_context is not None and connection.context is not self._ssl_context:
            connection.context = self._ssl_context

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=bool(self.client_ca)
        )


def _unreadable(exc: OSError) -> ConfigError:
    return ConfigError(
        [f"RATELIMITD_TLS_CERT/_KEY/_CLIENT_CA: cannot read {exc.filename}: {exc.strerror}"]
    )
