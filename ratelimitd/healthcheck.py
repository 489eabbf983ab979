"""`ratelimitd healthcheck`: asks the running server's `/healthcheck`, on the port it serves.

A container's HEALTHCHECK runs beside the server with the image's environment, not with the
server's flags: reading `RATELIMITD_HTTP_PORT` alone made `serve --http-port N` look unhealthy.
So the address is worked out the way `serve` worked it out, from the server process's own
command line and environment (`/proc/<pid>/cmdline` and `environ`, which the same user may
read). The server is PID 1 in a container; elsewhere, the first `ratelimitd serve` found, or
`--pid`. With none found (another PID namespace), this process's environment is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ratelimitd.errors import ConfigError
from ratelimitd.serve_options import parse_serve_arguments, serve_settings
from ratelimitd.settings import Settings

PROC = Path("/proc")
TIMEOUT_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=int, help="the server's process id (default: found)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds (default 2)")


def run(args: argparse.Namespace) -> int:
    """0 when /healthcheck answers 200; 1 otherwise, with the reason on stderr."""
    try:
        url = healthcheck_url(server_settings(args.pid))
    except (ConfigError, OSError) as exc:
        print(f"ratelimitd healthcheck: cannot tell the server's settings: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"ratelimitd healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"ratelimitd healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def healthcheck_url(settings: Settings) -> str:
    """Where the server's /healthcheck is, seen from beside it (a wildcard address is asked
    on loopback; asyncio binds `::` to IPv6 only)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}/healthcheck"


def server_settings(pid: int | None = None, proc: Path = PROC) -> Settings:
    """The settings the server was started with: its flags over its environment."""
    found = _serve_process(pid, proc)
    if found is None:
        return Settings.from_env()
    argv, environ = found
    return settings_of(argv, environ)


def settings_of(argv: Sequence[str], environ: dict[str, str]) -> Settings:
    """As `ratelimitd serve` reads `argv` (the words after `serve`) with `environ`."""
    return serve_settings(parse_serve_arguments(argv), environ)


def _serve_process(pid: int | None, proc: Path) -> tuple[list[str], dict[str, str]] | None:
    """A `ratelimitd serve` process's arguments after `serve`, and its environment."""
    candidates = [pid] if pid is not None else _pids(proc)
    for candidate in candidates:
        try:
            words = _words(proc / str(candidate) / "cmdline")
            tail = serve_arguments(words)
            if tail is not None:
                environ = dict(
                    word.split("=", 1)
                    for word in _words(proc / str(candidate) / "environ")
                    if "=" in word
                )
                return tail, environ
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return None


def serve_arguments(words: Sequence[str]) -> list[str] | None:
    """The arguments after `serve` when `words` run `ratelimitd serve` (the script, or
    `python -m ratelimitd`); None otherwise."""
    for index, word in enumerate(words):
        is_program = Path(word).name == "ratelimitd" or (
            word == "ratelimitd" and index and words[index - 1] == "-m"
        )
        if is_program and index + 1 < len(words) and words[index + 1] == "serve":
            return list(words[index + 2 :])
    return None


def _pids(proc: Path) -> list[int]:
    """PID 1 first (the server, in a container), then the others in order; not this one."""
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    return [pid for pid in pids if pid != os.getpid()]


def _words(path: Path) -> list[str]:
    return [word.decode(errors="replace") for word in path.read_bytes().split(b"\0") if word]
