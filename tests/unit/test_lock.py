"""The lock (requirements.txt, requirements-dev.txt): exact, hashed, consistent, and what the
test venv holds."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {"service": ROOT / "requirements.txt", "dev": ROOT / "requirements-dev.txt"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked(lock: Path) -> dict[str, tuple[Version, Requirement]]:
    """Each locked package: its version and its full requirement (with the marker)."""
    pins: dict[str, tuple[Version, Requirement]] = {}
    for entry in entries(lock):
        requirement = Requirement(entry.splitlines()[0].rstrip(" \\"))
        (specifier,) = requirement.specifier
        pins[canonicalize_name(requirement.name)] = (Version(specifier.version), requirement)
    return pins


def entries(lock: Path) -> list[str]:
    """The lock's requirement entries, each with its continuation lines."""
    found: list[str] = []
    for line in lock.read_text().splitlines():
        if line.startswith(("#", " ")) or not line.strip():
            if found and line.startswith("    --hash"):
                found[-1] += "\n" + line
            continue
        found.append(line)
    return found


def declared() -> list[Requirement]:
    """What pyproject.toml (and the client's) ask for: dependencies and the extras dev uses."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    texts = [
        *project["dependencies"],
        *project["optional-dependencies"]["test"],
        *project["optional-dependencies"]["bench"],
        *client.get("dependencies", []),
        *client.get("optional-dependencies", {}).get("starlette", []),
    ]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_locked_package_is_exact_and_hashed(name: str) -> None:
    found = entries(LOCKS[name])
    assert len(found) > 10
    for entry in found:
        first = entry.splitlines()[0]
        assert PIN.match(first), f"{name}.txt: not an exact pin: {first!r}"
        assert "--hash=sha256:" in entry, f"{name}.txt: no hash for {first!r}"


def test_the_service_lock_and_the_dev_lock_agree() -> None:
    service, dev = locked(LOCKS["service"]), locked(LOCKS["dev"])
    disagree = {
        name: (str(version), str(dev[name][0]))
        for name, (version, _) in service.items()
        if name not in dev or dev[name][0] != version
    }
    assert not disagree


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    dev = locked(LOCKS["dev"])
    service = locked(LOCKS["service"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    service_names = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in dev, f"{name} is declared but not in requirements-dev.txt"
        assert requirement.specifier.contains(dev[name][0], prereleases=True), (
            f"requirements-dev.txt locks {name}=={dev[name][0]}, outside {requirement}"
        )
        if name in service_names:
            assert name in service, f"{name} is a service dependency but not in requirements.txt"


def test_redis_py_is_locked_on_8() -> None:
    """The lock is on redis-py 8.x, the version a `pip install` gets today (issue 17)."""
    version, _ = locked(LOCKS["service"])["redis"]
    assert version.major == 8


def test_the_test_venv_holds_exactly_the_lock() -> None:
    wrong = {}
    for name, (version, requirement) in locked(LOCKS["dev"]).items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        installed = Version(metadata.version(name))
        if installed != version:
            wrong[name] = (str(version), str(installed))
    assert not wrong, f"locked vs installed: {wrong}"


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("scripts/test", "scripts/install dev"),
        ("scripts/install", '--require-hashes -r "$lock"'),
        ("README.md", "scripts/install && .venv/bin/ratelimitd serve"),
        ("Dockerfile", "--require-hashes -r requirements.txt"),  # lines joined
        (".ci/run", "scripts/test"),
    ],
)
def test_every_install_takes_the_lock(path: str, needle: str) -> None:
    text = " ".join((ROOT / path).read_text().replace("\\\n", " ").split())
    assert needle in text
