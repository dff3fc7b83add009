"""The benchmark's synthetic cluster (benchmarks/bench_planner.py) for tests."""

from __future__ import annotations

from typing import Any

from tests.harness.scripts import load_script


def build_snapshot(nodes: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``bench_planner.build_snapshot``: a snapshot dict in the contract's shape (its defaults)."""
    data: dict[str, Any] = load_script("benchmarks/bench_planner.py").build_snapshot(nodes, *args, **kwargs)
    return data
