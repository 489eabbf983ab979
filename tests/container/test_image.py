"""The image and the compose file, built and run for real with podman (issue 19).

The project's unchanged Dockerfile is built on local stand-ins of its base image (podman.py),
run read-only with every capability dropped, and asked for /healthcheck, a gRPC decision and
its own HEALTHCHECK; docker-compose.yml is run unchanged by podman-compose and Envoy in it
limits the fourth request. podman, runc and debootstrap come from apt (scripts/test installs
them): when they are missing these tests fail, they never skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.container import podman as pm
from tests.deploy.tools import REPO, tool
from tests.e2e.harness import DEMO_DOMAIN
from tests.servers.redis import free_port

pytestmark = pytest.mark.container

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ratelimitd:{VERSION}"  # what the compose file and the Kubernetes manifests run
# What the image adds to its base (the venv, the rules), and the whole image on the stand-in
# base (Debian's Python with pip, somewhat larger than python:3.11-slim-bookworm).
MAX_ADDED_MB = 80
MAX_IMAGE_MB = 250
COMPOSE_PROJECT = "ratelimitd-demo"  # docker-compose.yml's `name`


def http_status(url: str, timeout: float = 3.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g} s")


@pytest.fixture(scope="module")
def image() -> str:
    started = time.monotonic()
    built = pm.local_images()
    stand_ins = time.monotonic() - started
    pm.build_project(REPO, IMAGE)
    print(
        f"\nstand-ins {stand_ins:.0f} s (built now: {built or 'none'}), "
        f"project image {time.monotonic() - started - stand_ins:.0f} s"
    )
    return IMAGE


class Container:
    """One container of the image, read-only, no capabilities, its ports on loopback."""

    def __init__(self, image: str, *command: str, http_port: int = 8080) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.name = f"ratelimitd-test-{self.http_port}"
        pm.podman(
            "run", "--detach", "--name", self.name,
            "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
            "--publish", f"127.0.0.1:{self.grpc_port}:8081",
            "--publish", f"127.0.0.1:{self.http_port}:{http_port}",
            image, *command,
        )  # fmt: skip
        self.health_url = f"http://127.0.0.1:{self.http_port}/healthcheck"

    def wait_healthy(self) -> None:
        wait_for(lambda: http_status(self.health_url) == 200, f"{self.name} /healthcheck")

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return pm.podman("exec", self.name, *command, check=False)

    def logs(self) -> str:
        return pm.podman("logs", self.name, check=False).stderr

    def remove(self) -> None:
        pm.podman("rm", "--force", "--time", "2", self.name, check=False)


@pytest.fixture
def container(image: str) -> Iterator[Container]:
    running = Container(image)
    try:
        running.wait_healthy()
        yield running
    finally:
        running.remove()


def decide(port: int, ip: str) -> int:
    """One ShouldRateLimit for the example rules' per-IP limit: the overall code."""
    request = rls_pb2.RateLimitRequest(domain="edge")
    request.descriptors.add().entries.append(
        ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value=ip)
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        return int(stub.ShouldRateLimit(request, timeout=10).overall_code)


def test_the_image_serves_health_and_decisions_read_only_without_capabilities(
    container: Container,
) -> None:
    assert http_status(container.health_url) == 200
    assert decide(container.grpc_port, "192.0.2.7") == rls_pb2.RateLimitResponse.OK


def test_the_image_runs_as_its_own_user_on_a_read_only_root(container: Container) -> None:
    assert container.exec("id", "-u").stdout.strip() == "10001"
    assert container.exec("id", "-g").stdout.strip() == "10001"
    written = container.exec("touch", "/opt/ratelimitd/written")
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    inspected = json.loads(pm.podman("image", "inspect", IMAGE).stdout)[0]
    assert inspected["Config"]["User"] == "10001:10001"


def test_the_image_keeps_its_healthcheck_and_it_passes(container: Container) -> None:
    inspected = json.loads(pm.podman("image", "inspect", IMAGE).stdout)[0]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "ratelimitd", "healthcheck"]
    result = pm.podman("healthcheck", "run", container.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr + container.logs()


def test_the_healthcheck_follows_serve_http_port(image: str) -> None:
    """`serve --http-port 9090` with RATELIMITD_HTTP_PORT still 8080 in the image: healthy."""
    moved = Container(image, "serve", "--http-port", "9090", http_port=9090)
    try:
        moved.wait_healthy()
        result = pm.podman("healthcheck", "run", moved.name, check=False)
        assert result.returncode == 0, result.stdout + result.stderr + moved.logs()
    finally:
        moved.remove()


def image_mb(image: str) -> float:
    return int(pm.podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def test_the_image_is_small(image: str) -> None:
    total, base = image_mb(image), image_mb("docker.io/library/python:3.11-slim-bookworm")
    print(f"\n{image}: {total:.0f} MB, {total - base:.0f} MB over its base")
    assert total - base < MAX_ADDED_MB
    assert total < MAX_IMAGE_MB


def context_copy(into: Path) -> Path:
    """The build context as .dockerignore admits it (what the Dockerfile copies)."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy2(REPO / name, into / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ratelimitd", "deploy/config"):
        shutil.copytree(REPO / name, into / name, ignore=ignore)
    return into


def test_a_source_change_rebuilds_offline_from_the_cached_dependencies(
    image: str, tmp_path: Path
) -> None:
    """The dependencies are a layer of their own, from the lock: a change to the sources
    rebuilds without the network."""
    context = context_copy(tmp_path)
    with (context / "ratelimitd" / "__init__.py").open("a") as init:
        init.write(f"# a change made by the container test at {time.time()}\n")
    result = pm.build_project(context, "localhost/ratelimitd-test:changed", "--network=none")
    assert "Successfully tagged" in result.stdout + result.stderr
    pm.podman("rmi", "localhost/ratelimitd-test:changed", check=False)


def compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("podman-compose"), "--file", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO, env=pm.environment(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def through_envoy() -> tuple[int, str]:
    """GET / through the compose file's Envoy: the status and `x-envoy-ratelimited`."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:10000/", timeout=5) as response:
            return int(response.status), response.headers.get("x-envoy-ratelimited", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-envoy-ratelimited", "")


def compose_container(service: str) -> str:
    names = pm.podman("ps", "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}",
                      "--filter", f"label=com.docker.compose.service={service}",
                      "--format", "{{.Names}}").stdout.split()  # fmt: skip
    assert len(names) == 1, f"{service}: {names}"
    return names[0]


def compose_healthy(service: str) -> Callable[[], bool]:
    """Whether the service's compose `healthcheck` passes, run now."""

    def healthy() -> bool:
        run = pm.podman("healthcheck", "run", compose_container(service), check=False)
        return run.returncode == 0

    return healthy


@pytest.fixture
def compose_up(image: str) -> Iterator[None]:
    compose("down", "--volumes", "--timeout", "2")  # (a run stopped half-way)
    up = compose("up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # podman 4.3 cannot wait for `service_healthy` (podman-compose says so and starts
        # everything at once): the test waits on the compose file's own healthcheck instead.
        wait_for(compose_healthy("ratelimitd"), "ratelimitd's compose healthcheck", timeout=120)
        envoy_ready = "http://127.0.0.1:9901/ready"
        wait_for(lambda: http_status(envoy_ready) == 200, "Envoy's /ready", timeout=120)
        yield
    finally:
        logs = compose("logs")
        print(logs.stdout[-4000:], logs.stderr[-2000:])
        compose("down", "--volumes", "--timeout", "2")


def test_the_compose_file_runs_unchanged_and_envoy_limits_the_fourth_request(
    compose_up: None,
) -> None:
    answers = [through_envoy() for _ in range(4)]
    assert [status for status, _ in answers] == [200, 200, 200, 429]
    assert answers[-1][1] == "true"
    keys = pm.podman("exec", compose_container("redis"), "redis-cli", "--scan").stdout.split()
    assert any(key.startswith(f"ratelimitd:{{{DEMO_DOMAIN}|") for key in keys), keys
