"""The memory floor: how much RSS the memory backend needs for N live keys.

Run in a fresh process (the harness does): `python -m bench.memory_keys --keys 1000000`.
It imports what `ratelimitd serve` imports, loads bench/config.yaml, then makes one decision
per ordinary user of the key space through `Limiter.should_rate_limit` (one `user=u-<n>`
descriptor, an hourly limit: every counter stays live), and prints one JSON line: RSS before
and after, the growth per key, the live keys and the time it took.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path

from bench.procstat import rss_bytes


async def fill(keys: int, via: str) -> dict[str, float | str]:
    import os

    import ratelimitd.app  # noqa: F401 - everything `serve` imports, for a realistic RSS
    from bench.targets import CONFIG
    from ratelimitd.backends.base import CounterRequest
    from ratelimitd.backends.memory import MemoryBackend
    from ratelimitd.config import load_config
    from ratelimitd.keys import counter_base
    from ratelimitd.limiter import Limiter
    from ratelimitd.model import Descriptor, Request

    config = load_config([str(CONFIG)])
    backend = MemoryBackend()
    limiter = Limiter(config, backend)
    gc.collect()
    pid = os.getpid()
    before = rss_bytes(pid)
    started = time.perf_counter()
    if via == "limiter":
        for n in range(keys):
            entries = (("user", f"u-{n}"),)
            await limiter.should_rate_limit(Request("bench", (Descriptor(entries),)))
    else:
        match = config.match("bench", (("user", "u-0"),))
        assert match is not None
        limits = match.rule.limits
        batch = []
        for n in range(keys):
            base = counter_base("ratelimitd:", "bench", (("user", f"u-{n}"),))
            batch.append(CounterRequest(base, limits, 1))
            if len(batch) == 1000:
                await backend.hit(batch)
                batch = []
        if batch:
            await backend.hit(batch)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes(pid)
    return {
        "ratelimitd": str(Path(sys.modules["ratelimitd.limiter"].__file__ or "?").parent),
        "keys": keys,
        "live_keys": len(backend),
        "via": via,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "growth_mb": (after - before) / 2**20,
        "bytes_per_key": (after - before) / max(keys, 1),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--via", choices=("limiter", "backend"), default="limiter")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(fill(args.keys, args.via))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
