"""Figures from a run: pods started, pending-time percentiles, slice utilization, reconfigurations.

Pending time counts every submitted pod: a pod that started waited from arrival to start; a pod
that never started waited from arrival to the end of the simulation (a lower bound), so a policy
cannot look fast by never starting the hard pods.

Everything here is deterministic except the ``timing`` block (CPU and wall seconds).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cdmo.sim.engine import RunResult

PERCENTILES = (50, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def pending_times(run: RunResult) -> list[float]:
    """Seconds each submitted pod waited (censored at the horizon for pods that never started), sorted."""
    waits = [
        (run.horizon - p.arrival) if start is None else (start - p.arrival)
        for p, start in zip(run.pods, run.start_times, strict=True)
    ]
    waits.sort()
    return waits


def utilization_series(run: RunResult) -> list[float]:
    """Mean fraction of the fleet's compute slices held by running pods, per time bucket."""
    denom = run.total_slices * run.util_bucket_seconds
    return [a / denom if denom else 0.0 for a in run.util_series]


def _round(x: float, digits: int = 1) -> float:
    return round(x, digits)


def summarize(run: RunResult) -> dict[str, Any]:
    """The figures of one run as a JSON-ready dict (see docs/simulate.md for each field)."""
    submitted = len(run.pods)
    started = sum(1 for s in run.start_times if s is not None)
    waits = pending_times(run)
    by_profile_sub: Counter[str] = Counter(p.profile for p in run.pods)
    by_profile_start: Counter[str] = Counter(
        p.profile for p, s in zip(run.pods, run.start_times, strict=True) if s is not None
    )
    stats = dict(run.policy_stats)
    timing = {k: round(float(v), 3) for k, v in sorted(stats.items()) if k.endswith("_seconds")}
    details = {k: v for k, v in sorted(stats.items()) if not k.endswith("_seconds") and k != "plans"}
    timing["sim_wall_seconds"] = round(run.wall_seconds, 3)
    timing["sim_cpu_seconds"] = round(run.cpu_seconds, 3)
    return {
        "policy": run.policy,
        "pods": {"submitted": submitted, "started": started, "never_started": submitted - started},
        "pending_seconds": {
            **{f"p{q}": _round(percentile(waits, q)) for q in PERCENTILES},
            "max": _round(waits[-1] if waits else 0.0),
            "mean": _round(sum(waits) / len(waits) if waits else 0.0),
        },
        "utilization": round(run.util_total / (run.total_slices * run.horizon), 4)
        if run.total_slices
        else 0.0,
        "offered_load": round(run.offered_slice_seconds / (run.total_slices * run.horizon), 4)
        if run.total_slices
        else 0.0,
        "reconfigurations": run.reconfigurations,
        "plans": int(stats.get("plans", 0)),
        "gpu_instances": {"created": run.gi_created, "destroyed": run.gi_destroyed},
        "disrupted_pods": run.disrupted,
        "by_profile": {
            p: {"submitted": by_profile_sub[p], "started": by_profile_start[p]}
            for p in sorted(by_profile_sub)
        },
        "details": details,
        "timing": timing,
    }


def without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its CPU and wall times: the part that a seed determines exactly."""
    return {k: v for k, v in summary.items() if k != "timing"}
