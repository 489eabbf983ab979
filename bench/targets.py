"""The servers under test, each a child process (tree) on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import REPO_ROOT
from bench.payloads import METHOD_PATH

CONFIG = REPO_ROOT / "bench" / "config.yaml"
HOST = "127.0.0.1"


_NEUTRAL_CWD: list[Path] = []


def neutral_cwd() -> Path:
    """An empty folder to run children in: `python -m` puts the working folder first on
    sys.path, and the repository root there would shadow `--ratelimitd-src`'s ratelimitd.
    `bench` itself is found through PYTHONPATH."""
    if not _NEUTRAL_CWD:
        _NEUTRAL_CWD.append(Path(tempfile.mkdtemp(prefix="bench-cwd-")))
    return _NEUTRAL_CWD[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent(command: list[str]) -> list[str]:
    """`command` under `setpriv --pdeathsig KILL` (util-linux), so that it dies with the
    harness even if the harness is killed. Not a `preexec_fn`: the harness runs gRPC threads,
    and running Python between fork and exec in a threaded process can deadlock."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


class Process:
    """One child process with its output in a temp log, stopped by SIGTERM."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None
        handle, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(handle)
        self.log_path = Path(path)

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} is not running"
        return self.popen.pid

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                _die_with_parent(self.command),
                env=self.env,
                cwd=neutral_cwd(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.popen.poll()
            if code is not None:
                output = self.log()
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code}:\n{output}")
            if time.monotonic() > deadline:
                output = self.log()
                self.stop()
                raise TimeoutError(f"{self.name} not ready within {timeout} s:\n{output}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None
        self.log_path.unlink(missing_ok=True)


@dataclass
class Target:
    """Something h2load drives: a gRPC server (ShouldRateLimit) or an HTTP app (GET /hello)."""

    name: str
    description: str
    protocol: str  # "grpc" | "http"
    backend: str  # "none" | "memory" | "redis" | "cluster": what its decisions cost
    redis: list[tuple[str, int]] = field(default_factory=list)  # masters it uses
    processes: list[Process] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0  # ratelimitd's HTTP port, when there is one

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        path = METHOD_PATH if self.protocol == "grpc" else "/hello"
        return f"http://{HOST}:{self.port}{path}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://{HOST}:{self.metrics_port}/metrics" if self.metrics_port else None

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    @property
    def limited(self) -> bool:
        return self.backend != "none"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes = []


def baseline() -> Target:
    target = Target("baseline", "empty grpc.aio server, constant OK", "grpc", "none")
    target.port = free_port()
    process = Process("baseline", [sys.executable, "-m", "bench.baseline_server", str(target.port)])
    process.start(lambda: port_open(target.port))
    target.processes.append(process)
    return target


def python_path(ratelimitd_src: Path | None) -> str:
    """PYTHONPATH for a child: `ratelimitd_src` (another checkout's root) first, if any."""
    return os.pathsep.join(str(p) for p in (ratelimitd_src, REPO_ROOT) if p is not None)


def ratelimitd(
    name: str,
    description: str,
    backend: str,
    redis_url: str = "",
    redis: list[tuple[str, int]] | None = None,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    ratelimitd_src: Path | None = None,
) -> Target:
    target = Target(name, description, "grpc", backend, list(redis or []))
    target.port, target.metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "ratelimitd", "serve", "--config", str(CONFIG),
        "--host", HOST, "--grpc-port", str(target.port), "--http-port", str(target.metrics_port),
    ]  # fmt: skip
    if workers > 1:
        command += ["--workers", str(workers)]
    env = {
        "RATELIMITD_LOG_LEVEL": "warning",
        "PYTHONPATH": python_path(ratelimitd_src),
        **(extra_env or {}),
    }
    if redis_url:
        env["RATELIMITD_REDIS_URL"] = redis_url
    process = Process(name, command, env)
    if not redis_url:  # not even one inherited from the harness's environment
        process.env.pop("RATELIMITD_REDIS_URL", None)
    health = f"http://{HOST}:{target.metrics_port}/healthcheck"
    process.start(lambda: http_status(health) == 200 and port_open(target.port))
    target.processes.append(process)
    if workers > 1:
        _wait_for_workers(process.pid, workers)
    return target


def _wait_for_workers(supervisor: int, workers: int, timeout: float = 30.0) -> None:
    """Until every worker is up (the port answers as soon as the first one is)."""
    from bench.procstat import process_tree

    deadline = time.monotonic() + timeout
    while len(process_tree([supervisor])) < workers + 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not start")
        time.sleep(0.1)
    time.sleep(2.0)  # let each worker finish binding and warm up


def fastapi_app(
    kind: str,
    redis_url: str,
    redis: list[tuple[str, int]],
    limiter: Target | None = None,
) -> Target:
    descriptions = {
        "none": "FastAPI, no rate limiting",
        "slowapi": "FastAPI + slowapi, Redis storage",
        "ratelimitd": "FastAPI + RateLimitMiddleware, ratelimitd on Redis",
    }
    backend = "none" if kind == "none" else "redis"
    target = Target(f"fastapi-{kind}", descriptions[kind], "http", backend)
    if kind != "none":
        target.redis = list(redis)
    if limiter is not None:
        target.processes.extend(limiter.processes)
        target.metrics_port = limiter.metrics_port
    target.port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.fastapi_apps:app_from_env",
        "--host", HOST, "--port", str(target.port), "--workers", "1",
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    env = {
        "BENCH_APP": kind,
        "BENCH_REDIS_URL": redis_url,
        "BENCH_RATELIMITD_ADDR": limiter.address if limiter is not None else "",
    }
    process = Process(target.name, command, env)
    process.start(lambda: http_status(f"{target.url}") == 200)
    target.processes.append(process)
    return target


def verify_http(target: Target) -> None:
    """GET /hello answers 200; behind our middleware, with the rate-limit headers that only a
    decision from ratelimitd puts there (the client fails open without them)."""
    with urllib.request.urlopen(target.url, timeout=5) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{target.name}: GET /hello answered {reply.status}")
        if target.name == "fastapi-ratelimitd" and reply.headers.get("RateLimit-Limit") is None:
            raise RuntimeError(f"{target.name}: no RateLimit-Limit header: ratelimitd not asked")
