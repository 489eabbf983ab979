"""`--workers N`: N `serve` processes sharing the gRPC and HTTP ports.

The supervisor binds the ports and its workers accept from those very sockets, so that the
connections waiting to be accepted outlive a worker that dies (transport/listen.py). grpcio's
server cannot adopt a socket: with `RATELIMITD_GRPC_SERVER=grpcio` its workers bind the gRPC
port each with SO_REUSEPORT.

The supervisor passes every setting to its workers through the environment, forwards
SIGTERM/SIGINT (graceful stop) and SIGHUP (config reload), and replaces a worker that dies on
its own at once (with a growing delay only when a worker keeps dying young, so that a crash
loop does not spin). It owns one prometheus-client multiprocess directory, made under the
temporary directory (`TMPDIR`, `/tmp`) and removed at exit, so that /metrics, answered by any
worker, sums them all: nothing needs to be set in the environment for that. A worker whose
supervisor is gone stops by itself (`watch_supervisor`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from ratelimitd.logs import get_logger
from ratelimitd.settings import ENV_PREFIX, Settings
from ratelimitd.transport.listen import listening_socket

log = get_logger("ratelimitd.workers")

POLL_S = 0.05
YOUNG_S = 5.0  # a worker that dies younger than this counts towards a crash loop
# By how many workers of a slot died young in a row: the first one is replaced at once.
RESTART_DELAYS_S = (0.0, 0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
STOP_MARGIN_S = 5.0  # beyond the workers' own shutdown grace, before they are killed
SUPERVISOR_CHECK_S = 1.0


@dataclass
class Listeners:
    """The sockets the supervisor binds for its workers."""

    http: socket.socket
    grpc: socket.socket | None  # None for grpcio, whose workers bind with SO_REUSEPORT

    @classmethod
    def bind(cls, settings: Settings) -> Listeners:
        http = listening_socket(settings.host, settings.http_port)
        if settings.grpc_server != "native":
            return cls(http, None)
        try:
            return cls(http, listening_socket(settings.host, settings.grpc_port))
        except OSError:
            http.close()
            raise

    def fds(self) -> tuple[int, ...]:
        return tuple(sock.fileno() for sock in (self.http, self.grpc) if sock is not None)

    def close(self) -> None:
        for sock in (self.http, self.grpc):
            if sock is not None:
                sock.close()


def worker_environment(
    settings: Settings, metrics_dir: str, listeners: Listeners
) -> dict[str, str]:
    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        env[ENV_PREFIX + field.name.upper()] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    env[ENV_PREFIX + "WORKERS"] = "1"
    env[ENV_PREFIX + "REUSE_PORT"] = "true"
    env[ENV_PREFIX + "SUPERVISOR_PID"] = str(os.getpid())
    env[ENV_PREFIX + "HTTP_FD"] = str(listeners.http.fileno())
    if listeners.grpc is not None:
        env[ENV_PREFIX + "GRPC_FD"] = str(listeners.grpc.fileno())
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


@dataclass
class Worker:
    slot: int
    process: subprocess.Popen[bytes]
    started: float
    died_young: int = 0  # how many workers in this slot died young in a row before this one


class Supervisor:
    """Starts `settings.workers` workers and keeps that many running until told to stop."""

    def __init__(self, settings: Settings, metrics_dir: str, listeners: Listeners) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.listeners = listeners
        self.env = worker_environment(settings, metrics_dir, listeners)
        self.command = [sys.executable, "-m", "ratelimitd", "serve"]
        self.workers: dict[int, Worker] = {}
        # slot -> (when its replacement may start, how many there died young in a row)
        self.restarts: dict[int, tuple[float, int]] = {}
        self.stopping_since: float | None = None

    def start(self, slot: int, died_young: int = 0) -> None:
        process = subprocess.Popen(self.command, env=self.env, pass_fds=self.listeners.fds())
        self.workers[slot] = Worker(slot, process, time.monotonic(), died_young)

    def signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def on_signal(self, signum: int, _: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.signal_all(signal.SIGHUP)
            return
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            log.info("stopping workers", signal=signal.Signals(signum).name)
        self.signal_all(signal.SIGTERM)

    def run(self) -> int:
        for slot in range(self.settings.workers):
            self.start(slot)
        log.info("workers started", workers=self.settings.workers, pids=self.pids())
        while self.workers or (self.restarts and self.stopping_since is None):
            time.sleep(POLL_S)
            self.reap()
            if self.stopping_since is None:
                self.start_due()
            else:
                self.kill_stragglers()
        log.info("workers stopped")
        return 0

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self.workers.values()]

    def reap(self) -> None:
        """Forgets dead workers (and their metrics' live gauges); plans their replacements."""
        now = time.monotonic()
        for slot, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            del self.workers[slot]
            mark_process_dead(worker.process.pid, self.metrics_dir)
            if self.stopping_since is not None:
                continue
            died_young = worker.died_young + 1 if now - worker.started < YOUNG_S else 0
            delay = RESTART_DELAYS_S[min(died_young, len(RESTART_DELAYS_S) - 1)]
            log.error(
                "worker exited; replacing it",
                worker=slot,
                pid=worker.process.pid,
                exit_code=code,
                delay_s=delay,
            )
            self.restarts[slot] = (now + delay, died_young)

    def start_due(self) -> None:
        now = time.monotonic()
        for slot, (when, died_young) in list(self.restarts.items()):
            if when <= now:
                del self.restarts[slot]
                self.start(slot, died_young)
                log.info("worker replaced", worker=slot, pid=self.workers[slot].process.pid)

    def kill_stragglers(self) -> None:
        assert self.stopping_since is not None
        if time.monotonic() - self.stopping_since > self.settings.shutdown_grace_s + STOP_MARGIN_S:
            log.error("workers did not stop in time; killing them", pids=self.pids())
            self.signal_all(signal.SIGKILL)


def supervise(settings: Settings) -> int:
    if settings.grpc_port == 0 or settings.http_port == 0:
        print("ratelimitd: --workers needs fixed ports, not 0", file=sys.stderr)
        return 2
    try:
        listeners = Listeners.bind(settings)
    except OSError as error:
        print(f"ratelimitd: cannot listen on {settings.host}: {error}", file=sys.stderr)
        return 2
    metrics_dir = tempfile.mkdtemp(prefix="ratelimitd-metrics-")
    supervisor = Supervisor(settings, metrics_dir, listeners)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    try:
        return supervisor.run()
    finally:
        supervisor.signal_all(signal.SIGKILL)  # only if something went wrong: none are left
        shutil.rmtree(metrics_dir, ignore_errors=True)
        listeners.close()


def mark_process_dead(pid: int, metrics_dir: str) -> None:
    """Drops a dead worker's `live*` gauge files, as prometheus-client asks of a supervisor."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


async def watch_supervisor(supervisor_pid: int, stop: Callable[[], None]) -> None:
    """Calls `stop` once this worker's supervisor is gone (it was killed: its workers must not
    go on serving unsupervised, holding the ports)."""
    while True:
        await asyncio.sleep(SUPERVISOR_CHECK_S)
        if os.getppid() != supervisor_pid:
            break
    log.warning("supervisor gone; stopping", supervisor_pid=supervisor_pid)
    stop()
