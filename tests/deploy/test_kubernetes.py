"""deploy/kubernetes/: every file parses, and what ratelimitd needs from its pod is there."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ratelimitd.config import config_from_texts
from tests.deploy.tools import REPO, dockerfile_env, tool
from tests.e2e.harness import load_template

K8S_DIR = REPO / "deploy" / "kubernetes"
CONFIG_DIR = REPO / "deploy" / "config"
GRPC_PORT, HTTP_PORT = 8081, 8080

Doc = dict[str, Any]


def k8s_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml"))


def all_documents() -> list[tuple[Path, Doc]]:
    out = []
    for path in k8s_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                out.append((path, document))
    return out


def documents(kind: str) -> list[Doc]:
    return [document for _, document in all_documents() if document["kind"] == kind]


def named(kind: str, name: str) -> Doc:
    (found,) = [d for d in documents(kind) if d["metadata"]["name"] == name]
    return found


def ratelimitd_pods() -> Iterator[tuple[str, Doc, Doc]]:
    """(deployment name, pod spec, ratelimitd container) for every pod that runs ratelimitd."""
    for deployment in documents("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            if container["name"] == "ratelimitd":
                yield deployment["metadata"]["name"], spec, container


def env_of(container: Doc) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_every_file_parses_into_named_kubernetes_objects() -> None:
    assert k8s_files(), "no files in deploy/kubernetes"
    for path, document in all_documents():
        assert isinstance(document, dict), path
        assert document.get("apiVersion") and document.get("kind"), path
        assert document["metadata"].get("name"), path
        assert "namespace" not in document["metadata"], f"{path}: let `kubectl -n` choose"
    kinds = {document["kind"] for _, document in all_documents()}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


def test_there_is_a_shared_deployment_and_a_sidecar_beside_envoy() -> None:
    pods = {name: spec for name, spec, _ in ratelimitd_pods()}
    assert "ratelimitd" in pods
    sidecars = [
        name
        for name, spec in pods.items()
        if any(c["name"] == "envoy" for c in spec.get("containers", []))
    ]
    assert sidecars, "no pod runs ratelimitd beside an envoy container"


@pytest.mark.parametrize("name", [name for name, _, _ in ratelimitd_pods()])
def test_ratelimitd_container(name: str) -> None:
    (spec, container) = next((s, c) for n, s, c in ratelimitd_pods() if n == name)
    env = env_of(container)
    grpc_port = int(env.get("RATELIMITD_GRPC_PORT", GRPC_PORT))
    http_port = int(env.get("RATELIMITD_HTTP_PORT", HTTP_PORT))
    assert (grpc_port, http_port) == (GRPC_PORT, HTTP_PORT)
    assert {p["containerPort"] for p in container["ports"]} == {GRPC_PORT, HTTP_PORT}

    # ready follows the backend; alive does not (a restart does not bring Redis back)
    for probe_name, path in (("readinessProbe", "/healthcheck"), ("livenessProbe", "/livez")):
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert port_number(container, probe["port"]) == HTTP_PORT, probe_name

    requests = container["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory")

    # The rules: a ConfigMap volume mounted where RATELIMITD_CONFIG points.
    config_path = env.get("RATELIMITD_CONFIG", dockerfile_env()["RATELIMITD_CONFIG"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config_path]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    config_map = named("ConfigMap", volume["configMap"]["name"])
    assert config_map["data"], "the rules ConfigMap is empty"

    context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser") == 10001  # the Dockerfile's USER


def test_rules_configmap_is_deploy_config_file_for_file() -> None:
    """The ConfigMap carries deploy/config/ unchanged, so its rules are the tested ones."""
    data = named("ConfigMap", "ratelimitd-config")["data"]
    on_disk = {path.name: path.read_text() for path in sorted(CONFIG_DIR.glob("*.yaml"))}
    assert data == on_disk


def test_rules_configmap_passes_the_config_loader() -> None:
    data = named("ConfigMap", "ratelimitd-config")["data"]
    config = config_from_texts(sorted(data.items()))
    assert "envoy-demo" in config.domains


def test_service_reaches_both_ports_of_the_ratelimitd_pods() -> None:
    service = named("Service", "ratelimitd")
    deployment = named("Deployment", "ratelimitd")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (_, _, container) = next(p for p in ratelimitd_pods() if p[0] == "ratelimitd")
    ports = {p["port"]: port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {GRPC_PORT: GRPC_PORT, HTTP_PORT: HTTP_PORT}


def test_disruption_budgets_select_their_deployments() -> None:
    budgets = documents("PodDisruptionBudget")
    assert {b["metadata"]["name"] for b in budgets} >= {"ratelimitd"}
    for budget in budgets:
        deployment = named("Deployment", budget["metadata"]["name"])
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector == deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert deployment["spec"]["replicas"] > budget["spec"]["minAvailable"]


def test_every_deployment_selects_its_own_pods() -> None:
    for deployment in documents("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def sidecar_envoy_config() -> Doc:
    text = named("ConfigMap", "edge-envoy")["data"]["envoy.yaml"]
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def test_sidecar_envoy_config_is_the_deploy_template_on_localhost() -> None:
    """Only the two cluster endpoints (and their discovery type) differ from envoy.yaml."""
    sidecar, template = sidecar_envoy_config(), load_template()
    endpoints = {}
    for config in (sidecar, template):
        for cluster in config["static_resources"]["clusters"]:
            (group,) = cluster["load_assignment"]["endpoints"]
            (endpoint,) = group["lb_endpoints"]
            address = endpoint["endpoint"]["address"].pop("socket_address")
            cluster.pop("type")
            if config is sidecar:
                endpoints[cluster["name"]] = (address["address"], address["port_value"])
    assert sidecar == template
    assert endpoints["ratelimitd"] == ("127.0.0.1", GRPC_PORT)
    (deployment,) = [d for d in documents("Deployment") if d["metadata"]["name"] == "edge"]
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    app_ports = {p["containerPort"] for p in containers["app"]["ports"]}
    assert endpoints["upstream"] == ("127.0.0.1", *app_ports)
    envoy_mount = containers["envoy"]["volumeMounts"][0]["mountPath"]
    assert containers["envoy"]["args"][:2] == ["-c", f"{envoy_mount}/envoy.yaml"]


def test_sidecar_envoy_config_validates(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(named("ConfigMap", "edge-envoy")["data"]["envoy.yaml"])
    result = subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_manifest_passes_the_kubernetes_schemas(tmp_path: Path) -> None:
    """kubernetes-validate --strict (unknown fields are errors), against its newest schemas;
    a manifest with a misspelt field fails it, so the check is live."""
    result = kubernetes_validate(*k8s_files())
    assert result.returncode == 0, result.stdout + result.stderr
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(
        (K8S_DIR / "ratelimitd-deployment.yaml").read_text().replace("replicas:", "replica:")
    )
    assert kubernetes_validate(misspelt).returncode != 0


# docker-library/redis, alpine/Dockerfile: `addgroup -S -g 1000 redis; adduser -S -G redis -u
# 999 redis`. The image starts as root and drops to that user; run as it from the start.
REDIS_IMAGE_USER, REDIS_IMAGE_GROUP = 999, 1000


def test_redis_runs_as_the_redis_image_user_and_group() -> None:
    deployment = named("Deployment", "ratelimitd-redis")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"].startswith("redis:") and container["image"].endswith("-alpine")
    context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert (context["runAsUser"], context["runAsGroup"]) == (REDIS_IMAGE_USER, REDIS_IMAGE_GROUP)
