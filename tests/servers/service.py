"""Runs `ratelimitd serve` as a real child process on free loopback ports."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.servers.redis import free_port

_LIVE: set[ServiceProcess] = set()


class ServiceProcess:
    """One `ratelimitd serve` process. `env` adds to (or, with None values, removes from) ours."""

    def __init__(self, config: str | Path, env: dict[str, str | None] | None = None) -> None:
        self.config = str(config)
        self.env = env or {}
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="ratelimitd-", suffix=".log", delete=False)  # noqa: SIM115 - kept open for the child

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait_healthy: bool = True, timeout: float = 20.0) -> ServiceProcess:
        env = dict(os.environ)
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        command = [
            sys.executable, "-m", "ratelimitd", "serve", "--config", self.config,
            "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _LIVE.add(self)
        self.wait_listening(timeout)
        if wait_healthy:
            self.wait_health(200, timeout)
        return self

    def health(self) -> int | None:
        """The status of `GET /healthcheck`, or None when nothing answers."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthcheck", timeout=2
            ) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def wait_listening(self, timeout: float = 20.0) -> None:
        self._wait(lambda: self.health() is not None, timeout, "to listen")

    def wait_health(self, status: int, timeout: float = 20.0) -> None:
        self._wait(lambda: self.health() == status, timeout, f"to report health {status}")

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"ratelimitd exited with {self.process.returncode}:\n{self.log()}"
                )
            if ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"ratelimitd did not come {what} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _LIVE.discard(self)
        code = self.process.returncode
        self.process = None
        return code

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)


@atexit.register
def _stop_all() -> None:
    for service in list(_LIVE):
        service.stop(timeout=5)
