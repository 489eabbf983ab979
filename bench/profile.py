"""Where a target's CPU goes under load: py-spy samples it while h2load drives it.

    python -m bench profile [--target rl-redis] [--concurrency 64] [--descriptors 1]
                            [--duration 15] [--out bench/results/profile]

Writes a flame graph (SVG) and the collapsed stacks, and prints the functions with the most
samples on CPU (self) and the share of samples by area (gRPC, redis-py, ratelimitd, asyncio,
protobuf, ...). py-spy (pip install py-spy) needs ptrace rights (root, or CAP_SYS_PTRACE).
py-spy's sampling costs the target some throughput; profiles are not benchmark figures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench import REPO_ROOT, grpc_check, loadgen, payloads, targets

AREAS = (
    ("grpc", ("grpc/", "grpc_")),
    ("redis-py", ("redis/",)),
    ("protobuf", ("google/protobuf",)),
    ("prometheus", ("prometheus_client",)),
    ("structlog/logging", ("structlog", "logging/")),
    ("asyncio", ("asyncio/", "selectors.py")),
)


# py-spy names ratelimitd's files relative to the package (`limiter.py`, `backends/redis/backend.py`)
OWN_FILES = frozenset(
    str(path.relative_to(REPO_ROOT / "ratelimitd"))
    for path in (REPO_ROOT / "ratelimitd").rglob("*.py")
    if "_proto" not in path.parts
)


def area_of(frame: str) -> str:
    location = frame[frame.rfind("(") + 1 :].rstrip(")").rsplit(":", 1)[0]
    if location in OWN_FILES or location.startswith("ratelimitd/"):
        return "ratelimitd"
    for name, needles in AREAS:
        if any(needle in frame for needle in needles):
            return name
    return "other"


def _function(frame: str) -> str:
    """A frame without its line number: `f (path.py:12)` -> `f (path.py)`."""
    return re.sub(r":\d+\)$", ")", frame)


def summarize(collapsed: Path, top: int = 20) -> list[str]:
    """Shares of samples: by area (the innermost frame of a known area), by function on top
    of the stack (self), and by ratelimitd function anywhere on the stack (inclusive)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_function(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            if area_of(frame) == "ratelimitd":
                inclusive[frame] += count
        areas[next((a for a in map(area_of, reversed(frames)) if a != "other"), "other")] += count
    if not total:
        return ["no samples"]

    def shares(counter: Counter[str], limit: int | None = None) -> list[str]:
        return [f"  {n / total:6.1%}  {name}" for name, n in counter.most_common(limit)]

    return [
        f"{total} samples; by the innermost frame of a known area:",
        *shares(areas),
        f"top {top} functions on top of the stack (self):",
        *shares(own, top),
        f"top {top} ratelimitd functions anywhere on the stack (inclusive):",
        *shares(inclusive, top),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__)
    parser.add_argument("--target", default="rl-redis", choices=("rl-memory", "rl-redis"))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--descriptors", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--no-native", action="store_true", help="Python frames only")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "profile")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    from tests.servers.redis import RedisServer

    args.out.mkdir(parents=True, exist_ok=True)
    space = payloads.KeySpace()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, RedisServer() as redis:
        if args.target == "rl-redis":
            target = targets.ratelimitd(
                "rl-redis", "", "redis", redis.url, [(redis.host, redis.port)]
            )
        else:
            target = targets.ratelimitd("rl-memory", "", "memory")
        try:
            grpc_check.verify(target.address, space, limited=True)
            shape = loadgen.shape_for(args.concurrency)
            bodies = []
            for process in range(shape.processes):
                body = Path(tmp) / f"p{process}.bin"
                user = space.draw_user(space.rng("profile", process))
                body.write_bytes(
                    payloads.grpc_frame(payloads.request(space, user, args.descriptors))
                )
                bodies.append(body)
            spec = loadgen.Round(target.url, shape, args.duration + 2, 0.5, bodies)
            results: list[loadgen.ProcessResult] = []
            load = threading.Thread(
                target=lambda: results.extend(loadgen.run_round(spec, Path(tmp)))
            )
            load.start()
            # --native shows gRPC's Cython/C core and hiredis, but needs py-spy to pause the
            # target for each sample (blocking mode), which slows it down further.
            mode = ["--nonblocking"] if args.no_native else ["--native"]
            stem = args.out / f"{args.target}-c{args.concurrency}-d{args.descriptors}"
            try:
                for fmt, suffix in (("raw", ".collapsed.txt"), ("flamegraph", ".svg")):
                    done = subprocess.run(
                        [py_spy, "record", "--pid", str(target.pids[0]), "--duration",
                         str(max(1, int(args.duration / 2))), "--rate", str(args.rate),
                         "--format", fmt, "--output", str(stem) + suffix, *mode],
                        capture_output=True, text=True,
                    )  # fmt: skip
                    if done.returncode != 0:
                        raise SystemExit(f"py-spy failed: {done.stderr.strip()}")
            finally:
                load.join()
            calls = sum(r.succeeded for r in results)
            print(f"{args.target} under c={args.concurrency}, d={args.descriptors}: "
                  f"{calls / spec.duration_s:.0f} calls/s while sampled")  # fmt: skip
            print("\n".join(summarize(Path(str(stem) + ".collapsed.txt"))))
            print(f"wrote {stem}.svg and {stem}.collapsed.txt")
        finally:
            target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
