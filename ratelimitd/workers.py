"""`--workers N`: N `serve` processes sharing the gRPC and HTTP ports (SO_REUSEPORT).

The supervisor passes every setting to its workers through the environment, forwards
SIGTERM/SIGINT (graceful stop) and SIGHUP (config reload), restarts a worker that dies on its
own, and gives them one prometheus-client multiprocess directory so /metrics, answered by any
worker, sums them all.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

from ratelimitd.logs import get_logger
from ratelimitd.settings import ENV_PREFIX, Settings

log = get_logger("ratelimitd.workers")
RESTART_DELAY_S = 1.0


def worker_environment(settings: Settings, metrics_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        env[ENV_PREFIX + field.name.upper()] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    env[ENV_PREFIX + "WORKERS"] = "1"
    env[ENV_PREFIX + "REUSE_PORT"] = "true"
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


def supervise(settings: Settings) -> int:
    if settings.grpc_port == 0 or settings.http_port == 0:
        print("ratelimitd: --workers needs fixed ports, not 0", file=sys.stderr)
        return 2
    own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="ratelimitd-metrics-"
    )
    env = worker_environment(settings, metrics_dir)
    command = [sys.executable, "-m", "ratelimitd", "serve"]
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def start(slot: int) -> None:
        workers[slot] = subprocess.Popen(command, env={**env, ENV_PREFIX + "WORKER_ID": str(slot)})

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for slot in range(settings.workers):
        start(slot)
    log.info("workers started", workers=settings.workers, pids=[p.pid for p in workers.values()])
    try:
        while workers:
            time.sleep(0.2)
            for slot, process in list(workers.items()):
                code = process.poll()
                if code is None:
                    continue
                _mark_dead(process.pid)
                if stopping:
                    del workers[slot]
                    continue
                log.error(
                    "worker exited; restarting it", worker=slot, pid=process.pid, exit_code=code
                )
                time.sleep(RESTART_DELAY_S)
                start(slot)
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("workers stopped")
    return 0


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
