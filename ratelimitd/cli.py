"""The `ratelimitd` command: serve, check-config, query."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from ratelimitd import healthcheck, logs, query
from ratelimitd.config import load_config
from ratelimitd.errors import ConfigError
from ratelimitd.loops import loop_factory
from ratelimitd.serve_options import add_serve_arguments, serve_settings
from ratelimitd.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratelimitd",
        description="A rate-limit decision service for Envoy and applications.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add_serve_arguments(commands.add_parser("serve", help="run the rate-limit service"))

    check = commands.add_parser("check-config", help="validate config files and exit")
    check.add_argument("paths", nargs="+", help="YAML files or directories")

    query_parser = commands.add_parser(
        "query", help="ask a running ratelimitd (exit 0 allowed, 1 over limit, 2 error)"
    )
    query.add_arguments(query_parser)

    health = commands.add_parser(
        "healthcheck",
        help="ask the running server's /healthcheck on the port it serves (exit 0 healthy)",
    )
    healthcheck.add_arguments(health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.paths)
    if args.command == "query":
        return query.run(args)
    if args.command == "healthcheck":
        return healthcheck.run(args)
    try:
        settings = serve_settings(args)
    except ConfigError as exc:
        _print_errors(exc)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        if settings.workers > 1:
            from ratelimitd.workers import supervise

            load_config([settings.config])  # a bad config stops here, not in every worker
            return supervise(settings)
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(_serve(settings))
    except ConfigError as exc:
        _print_errors(exc)
        if not Path(settings.config).exists():
            print(
                f"ratelimitd: no config at {settings.config}: give the path of a YAML file or "
                "directory with --config PATH or RATELIMITD_CONFIG",
                file=sys.stderr,
            )
        return 1
    except OSError as exc:
        print(f"ratelimitd: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: Settings) -> None:
    from ratelimitd.app import serve

    await serve(settings)


def check_config(paths: Sequence[str]) -> int:
    """The paths are loaded together, as one config, as `serve` would load a directory."""
    try:
        config = load_config(paths)
    except ConfigError as exc:
        _print_errors(exc)
        return 1
    for line in config.summary():
        print(line)
    return 0


def _print_errors(exc: ConfigError) -> None:
    for line in exc.errors:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
