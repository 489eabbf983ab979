"""CPU seconds and resident memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now alive."""
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants now alive."""
    tree = children_map()
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(tree.get(pid, []))
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads); 0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # after the name: state(0) ppid(1) ... utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of one process; 0 when it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


@dataclass(frozen=True)
class TreeSample:
    cpu: dict[int, float]  # pid -> CPU seconds so far
    rss: int  # bytes, summed over the tree


def sample(roots: list[int]) -> TreeSample:
    pids = process_tree(roots)
    return TreeSample({pid: cpu_seconds(pid) for pid in pids}, sum(rss_bytes(p) for p in pids))


def cpu_delta(before: TreeSample, after: TreeSample) -> float:
    """CPU seconds the tree spent between two samples (processes born in between count
    from zero; processes that died in between are lost, which a benchmark avoids)."""
    return sum(cpu - before.cpu.get(pid, 0.0) for pid, cpu in after.cpu.items())
