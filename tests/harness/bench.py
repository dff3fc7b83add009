"""The benchmark's synthetic cluster (benchmarks/bench_planner.py) for tests.

The benchmark is a script, not a package, so it is loaded from its file, once per test process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

BENCH_PLANNER = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_planner.py"


@functools.cache
def _module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_planner", BENCH_PLANNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_snapshot(nodes: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``bench_planner.build_snapshot``: a snapshot dict in the contract's shape (its defaults)."""
    data: dict[str, Any] = _module().build_snapshot(nodes, *args, **kwargs)
    return data
