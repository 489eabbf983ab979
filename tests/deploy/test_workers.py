"""`--workers`, run the way the image and the Kubernetes Deployment run it: the Dockerfile's
and the Deployment's environment, `ratelimitd serve`, nothing else set (no
PROMETHEUS_MULTIPROC_DIR: the supervisor owns its metrics directory, under TMPDIR, which the
Deployment mounts as an emptyDir at /tmp)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from tests.deploy.test_kubernetes import env_of, ratelimitd_pods
from tests.deploy.tools import REPO, dockerfile_env
from tests.integration.test_grpc_server import OK, rl_request
from tests.servers.redis import RedisServer
from tests.servers.service import ServiceProcess

CONFIG_DIR = REPO / "deploy" / "config"  # what the image bakes in and the ConfigMap carries


def deployed_environment(redis_url: str, tmp_path: Path) -> dict[str, str | None]:
    """The image's RATELIMITD_* settings, overridden by the Deployment's, as a pod sees them;
    only the Redis address and the temporary directory are this machine's."""
    (container,) = [c for name, _, c in ratelimitd_pods() if name == "ratelimitd"]
    assert container["args"] == ["serve"]  # the image's ENTRYPOINT is `ratelimitd`
    settings = {
        name: value
        for name, value in {**dockerfile_env(), **env_of(container)}.items()
        if name.startswith("RATELIMITD_")
        # ServiceProcess gives these as flags: loopback, free ports, the same rules
        and name not in ("RATELIMITD_HOST", "RATELIMITD_GRPC_PORT", "RATELIMITD_HTTP_PORT")
        and name != "RATELIMITD_CONFIG"
    }
    assert int(settings["RATELIMITD_WORKERS"]) >= 2, "the Deployment runs several workers"
    return {
        **settings,
        "RATELIMITD_REDIS_URL": redis_url,
        "RATELIMITD_LOG_FORMAT": "console",
        "TMPDIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": None,  # removed: nothing but the supervisor sets it
    }


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet has stopped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def wait_for(condition: object, timeout: float, what: str) -> float:
    """Seconds until `condition()` held."""
    assert callable(condition)
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


# A call that a killed worker had accepted and not yet answered fails with it; nothing can
# save it. Such a failure is seen within this long of the kill, at most one per port (each
# port is asked one call at a time), and is not a failure to connect.
IN_FLIGHT_S = 0.5
FAILED_TO_CONNECT = ("failed to connect", "Connection refused")


@dataclass(frozen=True)
class Failure:
    at: float  # time.monotonic()
    port: str
    what: str


class PortWatcher:
    """Asks both ports on a new connection every few milliseconds and keeps every failure."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.failures: list[Failure] = []
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._ask("http", self._ask_http)
            self._ask("grpc", self._ask_grpc)
            time.sleep(0.01)

    def _ask(self, port: str, ask: Callable[[], None]) -> None:
        try:
            ask()
            self.answers += 1
        except (OSError, urllib.error.URLError, grpc.RpcError, AssertionError) as exc:
            self.failures.append(Failure(time.monotonic(), port, repr(exc)))

    def _ask_http(self) -> None:
        url = f"http://127.0.0.1:{self.service.http_port}/livez"
        with urllib.request.urlopen(url, timeout=2) as reply:
            assert reply.status == 200

    def _ask_grpc(self) -> None:
        with grpc.insecure_channel(self.service.target) as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            request = rl_request([("remote_address", "10.0.0.1")], domain="nowhere")
            assert stub.ShouldRateLimit(request, timeout=2).overall_code == OK

    def unexplained(self, killed_at: float) -> list[Failure]:
        """The failures that are not the one call per port the killed worker had in hand."""
        in_flight: set[str] = set()
        unexplained = []
        for failure in self.failures:
            explained = (
                killed_at <= failure.at <= killed_at + IN_FLIGHT_S
                and failure.port not in in_flight
                and not any(sign in failure.what for sign in FAILED_TO_CONNECT)
            )
            if explained:
                in_flight.add(failure.port)
            else:
                unexplained.append(failure)
        return unexplained

    @contextmanager
    def running(self) -> Iterator[PortWatcher]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


def test_a_killed_worker_is_replaced_and_the_ports_keep_answering(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = deployed_environment(redis_server.url, tmp_path)
    service = ServiceProcess(CONFIG_DIR, env).start()
    assert service.process is not None
    supervisor = service.process.pid
    try:
        wait_for(lambda: service.log().count("ratelimitd listening") == 2, 20, "two workers")
        (metrics_dir,) = tmp_path.glob("ratelimitd-metrics-*")  # the supervisor's own
        first = children(supervisor)
        assert len(first) == 2
        victim = min(first)
        with PortWatcher(service).running() as watcher:
            time.sleep(0.5)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replaced_after = wait_for(
                lambda: len(children(supervisor) - first) == 1, 2.0, "a replacement started"
            )
            wait_for(lambda: service.log().count("ratelimitd listening") == 3, 20, "it serves")
            time.sleep(0.5)
        assert watcher.unexplained(killed_at) == [], watcher.failures[:3]
        assert len(watcher.failures) <= 2
        assert watcher.answers > 40
        now = children(supervisor)
        assert len(now) == 2 and victim not in now
        assert replaced_after < 2.0
        assert service.process.poll() is None, "the supervisor survived its worker"
    finally:
        code = service.stop(timeout=20)
    log = service.log()
    assert code == 0, log
    assert "Traceback" not in log
    assert "Warning" not in log  # prometheus-client's UserWarning, printed at every start
    assert "workers stopped" in log
    assert not metrics_dir.exists(), "the supervisor removes its metrics directory"


def test_workers_of_a_killed_supervisor_stop_by_themselves(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = ServiceProcess(CONFIG_DIR, deployed_environment(redis_server.url, tmp_path)).start()
    assert service.process is not None
    try:
        wait_for(lambda: service.log().count("ratelimitd listening") == 2, 20, "two workers")
        workers = children(service.process.pid)
        service.process.kill()  # SIGKILL: no chance to stop them
        service.process.wait(10)

        def all_gone() -> bool:
            return all(not alive(pid) for pid in workers)

        wait_for(all_gone, 15, "the orphaned workers stopped")
        assert "supervisor gone; stopping" in service.log()
    finally:
        service.stop()
