"""Offered load per GPU pool: where in a mixed fleet the work exceeds what the GPUs can do.

    .venv/bin/python scripts/offered_by_pool.py examples/mixed-fleet.yaml --rate 1.6 --seeds 100-109

A pool is a set of GPU models that the workload's profiles join: a pod asks for a profile, and
only models that offer it can serve it (mixed-fleet's 1g.5gb runs on A100-40GB only, 1g.10gb on
A100-80GB or H100, 7g.141gb on H200 only). Per pool: the work its pods bring (compute slices x
duration of every pod that arrives during the run) over the pool's compute slices for the run,
mean over the seeds (least-most). The whole fleet's figure is what ``cdmo simulate`` prints as
the offered load; a pool above 100% queues its pods whatever the policy, even when the fleet as a
whole has room (docs/simulate.md, "Above capacity").
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from cdmo.errors import InvalidInput
from cdmo.mig.catalog import GpuModel
from cdmo.sim.scenario import Scenario, load_scenario
from cdmo.sim.workload import PodSpec, generate_workload, offered_slice_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent))
# A sibling script, not a package: found through the path set above.
from sweep_simulate import rate_arg, scaled, seeds_arg, seeds_text


def pools(models: Sequence[GpuModel], profiles: set[str]) -> list[tuple[GpuModel, ...]]:
    """The models grouped so that every profile in ``profiles`` is offered within one group
    (models that share a wanted profile are one pool; a model no profile joins is its own)."""
    group = {m.key: {m.key} for m in models}
    for profile in sorted(profiles):
        offering = [m.key for m in models if m.has_profile(profile)]
        for key in offering[1:]:
            merged = group[offering[0]] | group[key]
            for member in merged:
                group[member] = merged
    by_key = {m.key: m for m in models}
    found = {tuple(sorted(keys)) for keys in group.values()}
    return [tuple(by_key[k] for k in keys) for keys in sorted(found)]


def pool_loads(scenario: Scenario, pods: Sequence[PodSpec]) -> dict[str, float]:
    """Pool name (its models joined by ``+``) -> offered load of that pool."""
    slices = {g.model.key: 0 for g in scenario.fleet}
    for g in scenario.fleet:
        slices[g.model.key] += g.count * g.gpus * g.model.compute_slices_total
    loads = {}
    for pool in pools(scenario.models, {p.profile for p in pods}):
        keys = {m.key for m in pool}
        mine = [p for p in pods if any(m.has_profile(p.profile) for m in pool)]
        capacity = sum(slices[k] for k in keys) * scenario.duration
        loads["+".join(m.key for m in pool)] = offered_slice_seconds(mine, pool, scenario.duration) / capacity
    return loads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--rate", type=rate_arg, default=1.0, help="rate multiplier (default 1.0)")
    parser.add_argument("--seeds", default="100-109", type=seeds_arg, help="a range 100-109 or a list 1,2,3")
    args = parser.parse_args(argv)
    try:
        scenario = scaled(load_scenario(args.scenario), args.rate)
    except InvalidInput as exc:
        parser.error(str(exc))
    per_seed = [
        pool_loads(scenario, generate_workload(scenario, seed=seed, duration=scenario.duration))
        for seed in args.seeds
    ]
    print(
        f"{scenario.name} x{args.rate:g}, seeds {seeds_text(args.seeds)}: offered load per pool, mean (least-most)"
    )
    for name in per_seed[0]:
        values = [loads[name] for loads in per_seed]
        print(f"  {name:28s} {statistics.mean(values):7.1%} ({min(values):.1%}-{max(values):.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
