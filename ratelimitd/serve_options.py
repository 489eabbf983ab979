"""`ratelimitd serve`'s options, and the settings they make with the environment.

Apart from the cli because `ratelimitd healthcheck` reads them too, from the server's own
command line (healthcheck.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from ratelimitd.settings import Settings


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", help="YAML file or directory (RATELIMITD_CONFIG)")
    serve.add_argument("--host", help="listen address (RATELIMITD_HOST, default 0.0.0.0)")
    serve.add_argument(
        "--grpc-port", type=int, help="gRPC port (RATELIMITD_GRPC_PORT, default 8081)"
    )
    serve.add_argument(
        "--http-port", type=int, help="HTTP port (RATELIMITD_HTTP_PORT, default 8080)"
    )
    serve.add_argument(
        "--redis-url", help="Redis URL; memory backend when absent (RATELIMITD_REDIS_URL)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="processes sharing the ports; needs Redis (RATELIMITD_WORKERS, default 1)",
    )


def parse_serve_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """`serve`'s options in `argv` (the words after `serve`); others are passed over."""
    parser = argparse.ArgumentParser(prog="ratelimitd serve", add_help=False)
    add_serve_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    return args


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """What `serve` runs with: its flags over the environment (`RATELIMITD_*`)."""
    return Settings.from_env(
        environ,
        config=args.config,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        redis_url=args.redis_url,
        workers=args.workers,
    )
