"""Planner time and memory against the size of one pod's requested count (issue 10).

    .venv/bin/python benchmarks/bench_huge_counts.py               # print the table
    .venv/bin/python benchmarks/bench_huge_counts.py --write-docs  # and update docs/benchmarks.md

The snapshot is tests/data/snapshots/huge-counts.yaml; the pod ``ml/trillion`` gets each count in
turn. Counts above what the largest labelled node can hold are answered before the search
(cdmo.planner.bounds), so time and peak memory must stay flat from 10^3 to 10^1000.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import yaml
from docs_section import write_section  # benchmarks/ is on sys.path when run

from cdmo.planner import Snapshot, parse_snapshot, plan
from cdmo.planner.algorithm import plan as search

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Planner: huge requested counts"
COUNTS = [("1", 1), ("14", 14), ("10^3", 10**3), ("10^12", 10**12), ("2^70", 2**70), ("10^1000", 10**1000)]


def _snapshot(count: int, *, others_too: bool = True) -> Snapshot:
    data = yaml.safe_load((ROOT / "tests/data/snapshots/huge-counts.yaml").read_text())
    if not others_too:
        data["pending"] = [p for p in data["pending"] if p["name"] != "beyond-64-bits"]
    for pod in data["pending"]:
        if pod["name"] == "trillion":
            pod["requests"] = {"nvidia.com/mig-1g.10gb": count}
    return parse_snapshot(data)


def measure_search_only(count: int) -> float:
    """The search without the bound in front (what issue 10 found): grows with the count."""
    snapshot = _snapshot(count, others_too=False)
    start = time.perf_counter()
    search(snapshot)
    return time.perf_counter() - start


def measure(count: int, repeat: int = 5) -> tuple[float, int]:
    snapshot = _snapshot(count)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        plan(snapshot)
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    plan(snapshot)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak


def render(rows: list[tuple[str, float, int]], unbounded: list[tuple[str, float]]) -> str:
    lines = [
        SECTION,
        "",
        "`cdmo plan` on `tests/data/snapshots/huge-counts.yaml` (3 GPUs, 6 pods) with the pod",
        "`ml/trillion` asking each count of `nvidia.com/mig-1g.10gb` in turn; best of 5, peak Python",
        "memory of one plan (tracemalloc).",
        "",
        "    .venv/bin/python benchmarks/bench_huge_counts.py --write-docs",
        "",
        f"Python {platform.python_version()}, {platform.machine()}:",
        "",
        "| requested count | plan time | peak memory |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {t * 1000:.2f} ms | {peak / 1024:.0f} KiB |" for name, t, peak in rows]
    lines += [
        "",
        "A count above the 14 devices the largest node can hold is answered before the search",
        "(`TooManyDevices`), so time and memory do not grow with the count. The search alone, without",
        "that bound (`cdmo.planner.algorithm.plan`, as before issue 10), grows with it: "
        + ", ".join(f"{t:.2f} s at {name}" for name, t in unbounded)
        + " (10^12 would take days).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = [(name, *measure(count)) for name, count in COUNTS]
    unbounded = [(name, measure_search_only(count)) for name, count in (("10^3", 10**3), ("10^5", 10**5))]
    section = render(rows, unbounded)
    print(section)
    if args.write_docs:
        write_section(SECTION, section, ROOT / "docs" / "benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
