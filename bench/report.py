"""The Markdown table and the PNG charts of one run's results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import floors

GRPC_ORDER = ("baseline", "rl-memory", "rl-redis", "rl-redis-w2", "rl-cluster")
FASTAPI_ORDER = ("fastapi-none", "fastapi-slowapi", "fastapi-ratelimitd")

Point = dict[str, Any]


def _num(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _errors(point: Point) -> str:
    backend = point.get("backend_errors")
    return f"{point['errors']} / {'-' if backend is None else backend}"


def _ordered(points: list[Point], order: tuple[str, ...]) -> list[Point]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(points, key=lambda p: (rank.get(p["target"], 99), p["concurrency"]))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _ratio_to(reference: Callable[[Point], Point | None]) -> Callable[[Point], str]:
    def ratio(point: Point) -> str:
        ref = reference(point)
        if ref is None or not ref["calls_per_s"]:
            return "-"
        return f"{point['calls_per_s'] / ref['calls_per_s']:.2f}"

    return ratio


def _machine_line(machine: dict[str, Any]) -> str:
    packages = machine["packages"]
    return (
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), {machine['mem_total_mb']} MB, "
        f"Linux {machine['kernel']}; Python {machine['python']}, grpcio {packages['grpcio']}, "
        f"redis-py {packages['redis']}, hiredis {packages['hiredis']}, Redis "
        f"{machine['redis_server']}, {machine['h2load']}; ratelimitd at {machine['git_commit']}"
        f" (+{machine['ratelimitd_uncommitted_files']} uncommitted files under ratelimitd/); "
        f"load average {machine['loadavg_start'][0]:.2f} at start, "
        f"{machine.get('loadavg_end', [0.0])[0]:.2f} at end"
    )


def markdown(results: dict[str, Any]) -> str:
    opts = results["options"]
    points: list[Point] = results["points"]
    out = [
        f"# ratelimitd benchmark, {results['date']}",
        "",
        f"Command: `{results['command'] or 'python -m bench run'}` ({results['runtime_s']:.0f} s)",
        "",
        f"Machine: {_machine_line(results['machine'])}.",
        "",
        *(
            [f"ratelimitd run from `{opts['ratelimitd_src']}`.", ""]
            if opts.get("ratelimitd_src")
            else []
        ),
        f"Load: h2load, {opts['duration_s']:g} s per point in rounds of ~{opts['round_s']:g} s "
        f"(each after a {opts['warmup_s']:g} s warm-up), concurrency = connections x streams "
        f"(up to {opts['streams']} streams per connection, up to {opts['max_processes']} h2load "
        f"processes). Key space {opts['keys']:,} users ({opts['hot_keys']} hot, drawn with "
        f"probability {opts['hot']:g}); {results['counters_prefilled']:,} counters prefilled, "
        f"{results['keys_touched_by_h2load']:,} distinct counters under h2load load.",
        "",
        "## Floors",
        "",
    ]
    out += _table(
        ["verdict", "floor", "figures"],
        [
            [
                f["verdict"],
                f["name"],
                "; ".join(f["figures"]) + (f" ({f['why']})" if f["why"] else ""),
            ]
            for f in results["floors"]
        ],
    )
    index = {(p["target"], p["load"], p["concurrency"], p["descriptors"]): p for p in points}

    def baseline_of(point: Point) -> Point | None:
        return index.get(("baseline", "sweep", point["concurrency"], point["descriptors"]))

    grpc_header = [
        "target", "c", "calls/s", "x baseline", "p50 ms", "p99 ms", "p999 ms",
        "CPU s/1k dec", "Redis CPU s/1k", "round trips/dec", "EVALSHA/dec", "Redis cmds/dec",
        "over limit", "RSS MB", "errors h2load/backend",
    ]  # fmt: skip
    ratio = _ratio_to(baseline_of)
    for d in opts["descriptors"]:
        rows = []
        for p in _ordered([p for p in points if p["descriptors"] == d], GRPC_ORDER):
            if p["target"].startswith("fastapi"):
                continue
            name = p["target"] + (" (paced: half of peak)" if p["load"] == "half-peak" else "")
            rows.append(
                [
                    name, str(p["concurrency"]), f"{p['calls_per_s']:.0f}", ratio(p),
                    _num(p["p50_ms"]), _num(p["p99_ms"]), _num(p["p999_ms"]),
                    _num(p["cpu_s_per_1k"], ".3f"), _num(p["redis_cpu_s_per_1k"], ".3f"),
                    _num(p["round_trips_per_decision"], ".3f"), _num(p["evalsha_per_decision"]),
                    _num(p["redis_commands_per_decision"]), _share(p["over_limit_share"]),
                    _num(p["rss_mb"], ".0f"), _errors(p),
                ]
            )  # fmt: skip
        if rows:
            out += ["", f"## ShouldRateLimit, {d} descriptor(s) per call", ""]
            out += _table(grpc_header, rows)
    out += _fastapi_section(results, index)
    memory = results.get("memory")
    if memory:
        out += [
            "",
            "## Memory backend",
            "",
            f"{memory['live_keys']:,} live keys through `Limiter.should_rate_limit` in a fresh "
            f"process: RSS {memory['rss_before_mb']:.0f} MB before, {memory['rss_after_mb']:.0f} "
            f"MB after (+{memory['growth_mb']:.0f} MB, {memory['bytes_per_key']:.0f} bytes per "
            f"key), filled in {memory['seconds']:.1f} s.",
        ]
    for label, other in (results.get("memory_by_src") or {}).items():
        out.append(
            f"\n{label} ({opts['also_src'][label]}): RSS {other['rss_before_mb']:.0f} MB before, "
            f"{other['rss_after_mb']:.0f} MB after {other['live_keys']:,} keys "
            f"({other['bytes_per_key']:.0f} bytes per key)."
        )
    out += [
        "",
        "CPU s/1k dec: CPU seconds of the target's process tree per 1,000 descriptor decisions "
        "(calls x descriptors). Round trips and script calls come from ratelimitd's metrics; "
        "EVALSHA and all commands from Redis INFO commandstats (all commands include those the "
        "script runs, health PINGs and the harness's INFO). RSS: the target's process tree "
        "after the point. Errors: h2load's failed/errored/non-2xx requests / calls ratelimitd "
        "answered without its backend (UNAVAILABLE, from its metrics; h2load sees HTTP 200 "
        "whatever the gRPC status).",
        "",
    ]
    return "\n".join(out)


def _fastapi_section(results: dict[str, Any], index: dict[Any, Point]) -> list[str]:
    points = [p for p in results["points"] if p["target"].startswith("fastapi")]
    skipped = {k: v for k, v in results.get("skipped", {}).items() if k.startswith("fastapi")}
    if not points and not skipped:
        return []

    def none_of(point: Point) -> Point | None:
        return index.get(("fastapi-none", "sweep", point["concurrency"], 1))

    ratio = _ratio_to(none_of)
    rows = [
        [
            p["target"], str(p["concurrency"]), f"{p['calls_per_s']:.0f}", ratio(p),
            _num(p["p50_ms"]), _num(p["p99_ms"]), _num(p["p999_ms"]),
            _num(p["cpu_s_per_1k"], ".3f"), _num(p["redis_cpu_s_per_1k"], ".3f"),
            _num(p["redis_commands_per_decision"]), _share(p["metrics_decisions_check"]),
            _num(p["rss_mb"], ".0f"), _errors(p),
        ]
        for p in _ordered(points, FASTAPI_ORDER)
    ]  # fmt: skip
    out = ["", "## FastAPI app (GET /hello, h2load --h1, one request per connection at a time)", ""]
    out += _table(
        ["app", "c", "requests/s", "x no limiting", "p50 ms", "p99 ms", "p999 ms",
         "CPU s/1k req", "Redis CPU s/1k", "Redis cmds/req", "decided by ratelimitd",
         "RSS MB", "errors h2load/backend"],
        rows,
    )  # fmt: skip
    out += [f"\n{name}: {why}" for name, why in skipped.items()]
    out.append(
        "\nCPU of fastapi-ratelimitd counts the app and its ratelimitd; Redis commands per "
        "request include every command Redis ran. Decided by ratelimitd: decisions in "
        "ratelimitd's metrics per request served; below 100% the client failed open (its 50 ms "
        "timeout) and let requests through undecided."
    )
    return out


def charts(results: dict[str, Any], throughput_png: Path, latency_png: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    points = [
        p
        for p in results["points"]
        if p["load"] == "sweep" and not p["target"].startswith("fastapi")
    ]
    descriptors = results["options"]["descriptors"]
    present = {p["target"] for p in points}
    names = [n for n in GRPC_ORDER if n in present] + sorted(present - set(GRPC_ORDER))

    def series(name: str, d: int, field: str) -> tuple[list[int], list[float]]:
        chosen = sorted(
            (p for p in points if p["target"] == name and p["descriptors"] == d),
            key=lambda p: p["concurrency"],
        )
        return [p["concurrency"] for p in chosen], [p[field] or 0.0 for p in chosen]

    fig, axes = plt.subplots(
        1, len(descriptors), figsize=(5.5 * len(descriptors), 4), squeeze=False
    )
    for ax, d in zip(axes[0], descriptors, strict=True):
        for name in names:
            xs, ys = series(name, d, "calls_per_s")
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("calls/s")
        ax.set_title(f"ShouldRateLimit throughput, {d} descriptor(s)/call")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(f"ratelimitd benchmark {results['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(throughput_png, dpi=80)
    plt.close(fig)

    fields = (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
    fig, axes = plt.subplots(
        len(descriptors), 3, figsize=(15, 3.6 * len(descriptors)), squeeze=False
    )
    for row, d in zip(axes, descriptors, strict=True):
        for ax, (field, label) in zip(row, fields, strict=True):
            for name in names:
                xs, ys = series(name, d, field)
                ax.plot(xs, ys, marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel("ms")
            ax.set_title(f"{label} latency, {d} descriptor(s)/call")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(latency_png, dpi=60)
    plt.close(fig)
    return [throughput_png, latency_png]


def floor_lines(results: dict[str, Any]) -> list[str]:
    return floors.lines(results["floors"])
