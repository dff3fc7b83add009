"""Held-out check of plan quality against the exact priority-first optimum (MILP, tests/unit/planner/oracle.py).

    .venv/bin/python benchmarks/check_planner_optimum.py --seeds 5000-5299
    .venv/bin/python benchmarks/check_planner_optimum.py --seeds 20000-20299 --nodes 4 --gpus 3 --pods 14 --json out.json

Seeds outside the unit tests' range (they use 0-199). Per snapshot: the plan is valid
(oracle.check_plan), has no priority inversion (oracle.inversions), and at each priority level
is compared with the optimum solved level by level. Printed: invalid plans, inversions, the
snapshots where a level above the lowest falls short of the optimum, and the lowest level's pods
served over its optimum (summed over the seeds). Needs the test extra (numpy, scipy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdmo.planner import parse_snapshot, plan, plan_to_dict  # noqa: E402
from tests.unit.planner.oracle import (  # noqa: E402
    check_plan,
    inversions,
    optimum_by_priority,
    random_snapshot,
    served_by_priority,
)


def check(seeds: range, nodes: int, gpus: int, pods: int) -> dict[str, Any]:
    invalid: list[int] = []
    inverted: list[int] = []
    upper_short: list[tuple[int, int, int, int]] = []
    lowest_got = lowest_best = 0
    multi_level = 0
    plan_seconds = 0.0
    for seed in seeds:
        data = random_snapshot(seed, max_nodes=nodes, max_gpus=gpus, max_pods=pods)
        t0 = time.perf_counter()
        out = plan_to_dict(plan(parse_snapshot(data)))
        plan_seconds += time.perf_counter() - t0
        if check_plan(data, out):
            invalid.append(seed)
        if inversions(data, out):
            inverted.append(seed)
        got, best = served_by_priority(data, out), optimum_by_priority(data)
        levels = sorted(best, reverse=True)
        multi_level += len(levels) > 1
        for level in levels[:-1]:
            if got[level] != best[level]:
                upper_short.append((seed, level, got[level], best[level]))
                break
        lowest_got += got[levels[-1]]
        lowest_best += best[levels[-1]]
    return {
        "seeds": f"{seeds.start}-{seeds.stop - 1}",
        "size": {"max_nodes": nodes, "max_gpus": gpus, "max_pods": pods},
        "snapshots": len(seeds),
        "with_several_levels": multi_level,
        "invalid": invalid,
        "inversions": inverted,
        "upper_levels_short": upper_short,
        "lowest_served": lowest_got,
        "lowest_optimum": lowest_best,
        "lowest_ratio": round(lowest_got / lowest_best, 4) if lowest_best else 1.0,
        "plan_seconds": round(plan_seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="5000-5299", help="a range LOW-HIGH (inclusive)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    lo, hi = (int(x) for x in args.seeds.split("-", 1))
    result = check(range(lo, hi + 1), args.nodes, args.gpus, args.pods)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    ok = not result["invalid"] and not result["inversions"] and not result["upper_levels_short"]
    return 0 if ok and result["lowest_ratio"] >= 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())
