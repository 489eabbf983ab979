"""Leases on Redis (`algorithm: concurrency`): the commands that run lua/lease_acquire.lua and
lua/lease_release.lua, and their replies. The Python twin is backends/lease_table.py."""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from typing import Any

from ratelimitd.backends.base import LeaseRequest, LeaseResult


def _script(name: str) -> str:
    folder = importlib.resources.files("ratelimitd.backends.redis") / "lua"
    return "\n".join(
        (folder / f"{part}.lua").read_text(encoding="utf-8") for part in ("prelude", name)
    )


ACQUIRE_SCRIPT = _script("lease_acquire")
RELEASE_SCRIPT = _script("lease_release")


def acquire_command(leases: Sequence[LeaseRequest], lease: str, now: str) -> tuple[Any, ...]:
    args: list[Any] = [now, lease]
    for request in leases:
        args += [request.max_in_flight, repr(request.ttl_s)]
    keys = [request.key for request in leases]
    return ("EVAL", ACQUIRE_SCRIPT, len(keys), *keys, *args)


def parse_acquire(reply: Sequence[int]) -> list[LeaseResult]:
    return [
        LeaseResult(reply[at] == 1, int(reply[at + 1]), reply[at + 2] / 1000)
        for at in range(0, len(reply), 3)
    ]


def release_command(keys: Sequence[str], lease: str, now: str) -> tuple[Any, ...]:
    return ("EVAL", RELEASE_SCRIPT, len(keys), *keys, now, lease)
