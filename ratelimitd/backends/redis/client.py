"""Builds a redis-py asyncio client from a `RATELIMITD_REDIS_URL`.

Forms: `redis://`, `rediss://` and `unix://` for one server; `redis+sentinel://h:p[,h:p]/NAME`
for Sentinel; `redis+cluster://h:p[,h:p]` for Cluster. User and password may be given in
each URL. TLS files come from the settings (`RATELIMITD_REDIS_TLS_CA`, `_CERT`, `_KEY`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from ratelimitd.errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class RedisOptions:
    url: str
    timeout_s: float = 0.1
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    batch_delay_s: float = 0.0005
    max_in_flight: int | None = None  # batches out at once per node; None: 16 lean, 4 redis-py


def describe(url: str) -> str:
    """The URL with any password hidden, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def make_client(options: RedisOptions) -> Any:
    """A redis-py asyncio client (`Redis` or `RedisCluster`) for `options.url`."""
    url = options.url
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    common: dict[str, Any] = {
        "socket_timeout": options.timeout_s,
        "socket_connect_timeout": options.timeout_s,
    }
    if scheme in ("redis", "rediss", "unix"):
        if scheme == "rediss":
            common.update(_tls(options))
        return redis_asyncio.Redis.from_url(url, **common)
    if scheme == SENTINEL_SCHEME:
        hosts, master, auth = _hosts(url, need_path=True)
        sentinel = Sentinel(hosts, sentinel_kwargs=dict(common), **common, **auth)
        return sentinel.master_for(master, **common, **auth)
    if scheme == CLUSTER_SCHEME:
        hosts, _, auth = _hosts(url, need_path=False)
        nodes = [ClusterNode(host, port) for host, port in hosts]
        return RedisCluster(startup_nodes=nodes, **common, **auth)
    raise ConfigError(
        [
            f"RATELIMITD_REDIS_URL: unsupported scheme in '{describe(url)}' (expected redis://, "
            "rediss://, unix://, redis+sentinel://host:port/master or redis+cluster://host:port)"
        ]
    )


STANDALONE_SCHEMES = ("redis", "rediss", "unix")


def is_standalone(url: str) -> bool:
    return url.split("://", 1)[0].lower() in STANDALONE_SCHEMES


def tls_context(options: RedisOptions) -> ssl.SSLContext:
    """The client TLS context for `rediss://`: the CA to trust, and our certificate if any."""
    context = ssl.create_default_context(cafile=options.tls_ca or None)
    if options.tls_cert:
        context.load_cert_chain(options.tls_cert, options.tls_key or None)
    return context


def _tls(options: RedisOptions) -> dict[str, Any]:
    tls: dict[str, Any] = {}
    if options.tls_ca:
        tls["ssl_ca_certs"] = options.tls_ca
    if options.tls_cert:
        tls["ssl_certfile"] = options.tls_cert
    if options.tls_key:
        tls["ssl_keyfile"] = options.tls_key
    return tls


def _hosts(url: str, need_path: bool) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """`(hosts, path, auth)` of a multi-host URL: `scheme://[user:pass@]h:p,h:p[/path]`."""
    rest = url.split("://", 1)[1]
    auth: dict[str, Any] = {}
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        user, _, password = credentials.partition(":")
        if user:
            auth["username"] = unquote(user)
        if password:
            auth["password"] = unquote(password)
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0].strip("/")
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                [f"RATELIMITD_REDIS_URL: expected host:port, got '{item}' in '{describe(url)}'"]
            )
        hosts.append((host.strip("[]"), int(port)))
    if need_path and not path:
        raise ConfigError(
            [f"RATELIMITD_REDIS_URL: '{describe(url)}' names no Sentinel master (…/NAME)"]
        )
    return hosts, path, auth
