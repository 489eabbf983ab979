"""`python -m bench run [options]`: the whole benchmark, end to end.

`python -m bench report RESULTS.json` redraws the Markdown table and the charts of a run;
`python -m bench profile [options]` samples ratelimitd with py-spy under load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import REPO_ROOT


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected integers >= 1")
    return values


def _labelled_path(text: str) -> tuple[str, Path]:
    label, _, path = text.partition("=")
    if not label or not path or not Path(path).is_dir() or "@" in label:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR with an existing DIR, got {text!r}")
    return label, Path(path).resolve()


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the benchmark and write bench/results/<date>.*")
    run.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds per target: c=16, 1 descriptor, 1,000 keys, "
        "20,000 memory keys, results in bench/results/quick/",
    )
    run.add_argument("--cluster", action="store_true", help="also run rl-cluster (3 masters)")
    run.add_argument("--concurrency", type=_ints, help="streams, e.g. 1,4,16,64,256 (default)")
    run.add_argument("--descriptors", type=_ints, help="descriptors per call, 1 to 3 (default 1,3)")
    run.add_argument("--duration", type=float, help="seconds per point (default 10)")
    run.add_argument("--round", type=float, help="seconds per round of fresh payloads (default 2)")
    run.add_argument("--warmup", type=float, help="h2load warm-up per round (default 0.3)")
    run.add_argument("--keys", type=int, help="distinct users in the key space (default 10000)")
    run.add_argument("--hot", type=float, help="probability of a hot user (default 0.1)")
    run.add_argument("--hot-keys", type=int, help="hot users (default keys/1000)")
    run.add_argument("--seed", type=int, help="payload draws (default 1)")
    run.add_argument("--streams", type=int, help="max streams per connection (default 4)")
    run.add_argument("--max-processes", type=int, help="max h2load processes (default 8)")
    run.add_argument(
        "--targets",
        type=_names,
        help="gRPC targets (default baseline,rl-memory,rl-redis,rl-redis-w2,rl-cluster)",
    )
    run.add_argument("--no-prefill", action="store_true", help="skip one hit per key beforehand")
    run.add_argument("--no-half-peak", action="store_true", help="skip the paced latency point")
    run.add_argument(
        "--paced-concurrency", type=int, help="streams of the paced point (default 64)"
    )
    run.add_argument("--no-fastapi", action="store_true", help="skip the FastAPI comparison")
    run.add_argument("--fastapi-concurrency", type=_ints, help="HTTP/1.1 connections (default 64)")
    run.add_argument("--memory-keys", type=int, help="memory floor keys (default 1000000; 0 skips)")
    run.add_argument("--out", type=Path, help="output folder (default bench/results)")
    run.add_argument(
        "--ratelimitd-src",
        type=Path,
        help="run ratelimitd from this source root instead (e.g. `git archive OLD ratelimitd`)",
    )
    run.add_argument(
        "--also-src",
        action="append",
        type=_labelled_path,
        default=[],
        metavar="LABEL=DIR",
        help="also run rl-memory, rl-redis... from this source root as rl-...@LABEL "
        "(repeatable): versions side by side in one run",
    )
    run.add_argument("--strict", action="store_true", help="exit 1 when a floor fails")
    report = commands.add_parser("report", help="redraw the table and charts of a results file")
    report.add_argument("results", type=Path)
    commands.add_parser("profile", help="py-spy a target under load (see bench/profile.py)")
    return parser  # fmt: skip


def options_from(args: argparse.Namespace) -> object:
    from bench.harness import Options

    opts = Options()
    if args.quick:
        opts.quick = True
        opts.concurrency = [16]
        opts.descriptors = [1]
        opts.duration_s = opts.round_s = 1.5
        opts.warmup_s = 0.2
        opts.keys = 1000
        opts.fastapi_concurrency = [16]
        opts.paced_concurrency = 16
        opts.memory_keys = 20_000
        opts.out = REPO_ROOT / "bench" / "results" / "quick"
    given = {
        "cluster": args.cluster or None,
        "concurrency": args.concurrency,
        "descriptors": args.descriptors,
        "duration_s": args.duration,
        "round_s": args.round,
        "warmup_s": args.warmup,
        "keys": args.keys,
        "hot": args.hot,
        "hot_keys": args.hot_keys,
        "seed": args.seed,
        "streams": args.streams,
        "max_processes": args.max_processes,
        "targets": args.targets,
        "paced_concurrency": args.paced_concurrency,
        "fastapi_concurrency": args.fastapi_concurrency,
        "memory_keys": args.memory_keys,
        "out": args.out,
        "ratelimitd_src": args.ratelimitd_src.resolve() if args.ratelimitd_src else None,
    }
    for name, value in given.items():
        if value is not None:
            setattr(opts, name, value)
    if args.quick and args.round is None and args.duration is not None:
        opts.round_s = opts.duration_s
    opts.also_src = list(args.also_src)
    opts.prefill = not args.no_prefill
    opts.half_peak = not args.no_half_peak
    opts.fastapi = not args.no_fastapi
    if any(d > 3 for d in opts.descriptors):
        raise SystemExit("--descriptors: 1 to 3")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["profile"]:
        from bench import profile

        return profile.main(argv[1:])
    args = build_parser().parse_args(argv)
    from bench import floors, harness, report

    if args.command == "report":
        results = json.loads(args.results.read_text())
        results["floors"] = [floor.as_dict() for floor in floors.evaluate(results)]
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        folder = args.results.parent
        (folder / f"{results['date']}.md").write_text(report.markdown(results))
        report.charts(
            results,
            folder / f"{results['date']}-throughput.png",
            folder / f"{results['date']}-latency.png",
        )
        print("\n".join(floors.lines(results["floors"])))
        return 0
    opts = options_from(args)
    assert isinstance(opts, harness.Options)
    results = harness.run_all(opts)
    written = harness.write(results, opts.out)
    print("\nfloors (ratios within this run):")
    print("\n".join(floors.lines(results["floors"])))
    print(f"\nruntime {results['runtime_s']:.0f} s; wrote " + ", ".join(str(p) for p in written))
    failed = any(f["verdict"] == "FAIL" for f in results["floors"])
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
