"""What the run ran on: hardware, versions, ratelimitd's commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

from bench import REPO_ROOT
from bench.loadgen import h2load_version

PACKAGES = (
    "grpcio", "protobuf", "xds-protos", "redis", "hiredis", "prometheus-client",
    "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "slowapi", "limits",
    "ratelimitd-client", "matplotlib",
)  # fmt: skip


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mb() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def describe(redis_version: str) -> dict[str, Any]:
    changed = [line for line in _git("status", "--porcelain", "ratelimitd").splitlines() if line]
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "h2load": h2load_version(),
        "packages": versions(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "ratelimitd_uncommitted_files": len(changed),
        "loadavg_start": list(os.getloadavg()),
    }
