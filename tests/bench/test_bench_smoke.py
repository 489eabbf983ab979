"""The benchmark harness runs end to end, briefly, against every target, so it cannot rot.

No timing is asserted: only that each target answered under load and the reports exist.
h2load (Debian's nghttp2-client) is required; without it this test fails, never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import floors, loadgen, payloads

REPO_ROOT = Path(__file__).resolve().parents[2]
GRPC_TARGETS = {"baseline", "rl-memory", "rl-redis", "rl-redis-w2", "rl-cluster"}
FASTAPI_TARGETS = {"fastapi-none", "fastapi-slowapi", "fastapi-ratelimitd"}


def test_quick_run_measures_every_target(tmp_path: Path) -> None:
    assert shutil.which("h2load"), "h2load is missing: apt-get install nghttp2-client"
    command = [
        sys.executable, "-m", "bench", "run", "--quick", "--cluster",
        "--duration", "1", "--memory-keys", "2000", "--out", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    [json_path] = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert (tmp_path / f"{results['date']}.md").read_text().startswith("# ratelimitd benchmark")
    assert (tmp_path / f"{results['date']}-throughput.png").stat().st_size > 0
    assert (tmp_path / f"{results['date']}-latency.png").stat().st_size > 0

    sweep = [p for p in results["points"] if p["load"] == "sweep"]
    measured = {p["target"] for p in sweep}
    expected = GRPC_TARGETS | FASTAPI_TARGETS
    assert measured | set(results["skipped"]) == expected, (measured, results["skipped"])
    # only our middleware may be missing, and only because the client is not installed
    for name, why in results["skipped"].items():
        assert name == "fastapi-ratelimitd" and "client not installed" in why, (name, why)
    for point in sweep:
        assert point["calls_per_s"] > 0, point
        assert point["errors"] == 0, point
        # most calls got a real answer (a timeout or two on a busy machine is no failure here)
        assert (point["backend_errors"] or 0) < point["calls"] / 2, point
    by_target = {p["target"]: p for p in sweep}
    for name in ("rl-redis", "rl-redis-w2", "rl-cluster"):
        seen = json.dumps(by_target[name])  # the whole point: pytest shortens a dict
        assert by_target[name]["round_trips_per_decision"] is not None, seen
        assert by_target[name]["evalsha_per_decision"] is not None, seen
    assert any(p["load"] == "half-peak" for p in results["points"])
    assert results["memory"]["live_keys"] == 2000
    assert [f["verdict"] for f in results["floors"]]  # computed, whatever they say


def test_load_shapes() -> None:
    shape = loadgen.shape_for(64, streams=4, max_processes=8)
    assert (shape.connections, shape.streams, shape.processes) == (16, 4, 8)
    assert sum(shape.per_process) == 16
    single = loadgen.shape_for(1)
    assert (single.connections, single.streams, single.per_process) == (1, 1, (1,))


def test_h2load_summary_and_percentiles() -> None:
    text = (
        "finished in 4.00s, 2711.33 req/s, 172.28KB/s\n"
        "requests: 8134 total, 8134 started, 8130 done, 8120 succeeded, 10 failed, "
        "4 errored, 0 timeout\n"
        "status codes: 8120 2xx, 0 3xx, 0 4xx, 2 5xx\n"
    )
    result = loadgen.parse_summary(text)
    assert (result.succeeded, result.failed, result.errored, result.non_2xx) == (8120, 10, 4, 2)
    values = list(range(1, 1001))
    assert loadgen.percentile(values, 0.5) == 500
    assert loadgen.percentile(values, 0.99) == 990
    assert loadgen.percentile(values, 0.999) == 999


def test_payloads_are_grpc_frames_and_same_for_every_target() -> None:
    space = payloads.KeySpace(keys=100, hot=0.5, hot_keys=2, seed=7)
    frame = payloads.grpc_frame(payloads.request(space, 5, 3))
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    draws = [space.draw_user(space.rng(64, 1, r, p)) for r in range(5) for p in range(8)]
    again = [space.draw_user(space.rng(64, 1, r, p)) for r in range(5) for p in range(8)]
    assert draws == again
    assert all(0 <= u < 100 for u in draws) and any(u < 2 for u in draws)


def test_floors_judge_ratios() -> None:
    def point(target: str, c: int, calls: float, **extra: object) -> dict[str, object]:
        return {"target": target, "load": "sweep", "concurrency": c, "descriptors": 1,
                "calls_per_s": calls, **extra}  # fmt: skip

    points = [
        point("baseline", 16, 3000.0),
        point("baseline", 64, 2000.0),
        point("rl-redis", 16, 2500.0),
        point("rl-redis", 64, 1900.0, round_trips_per_decision=0.3),
    ]
    assert floors.throughput(points, [1]).verdict == "PASS"  # 2500 / 3000 at c=16
    assert floors.round_trips(points, [1]).verdict == "FAIL"  # 0.3 > 0.25
    assert floors.half_peak_latency(points, [1]).verdict == "N/A"


def test_rounds_interleave_across_targets_in_alternating_order() -> None:
    from bench import measure

    ran: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def run_round(self, spec: int) -> None:
            ran.append((self.name, spec))

        def point(self) -> str:
            return self.name

    recorders = [Recorder("a"), Recorder("b"), Recorder("c")]
    points = measure.run_interleaved(recorders, [[0, 1, 2], [0, 1, 2], [0, 1]])  # type: ignore[arg-type]
    assert points == ["a", "b", "c"]
    assert ran == [
        ("a", 0), ("b", 0), ("c", 0),
        ("c", 1), ("b", 1), ("a", 1),
        ("a", 2), ("b", 2),
    ]  # fmt: skip
