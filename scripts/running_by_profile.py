"""How many pods of each profile run over time, per policy, on one seed of a scenario.

    .venv/bin/python scripts/running_by_profile.py examples/clearml-queues.yaml --rate 1.4 \
        --seed 103 --policy dynamic --policy first-fit --from 5h

Prints, per policy, the least and the most pods of each profile running at once between
``--from`` and the end, sampled every ``--step`` (from each pod's start and duration in the run,
so the engine needs no instrumenting). On a fleet above capacity this shows whether the policies
keep the same number of GPUs per large profile: a GPU takes another role only when it empties
(docs/simulate.md, "Above capacity").
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

from cdmo.errors import InvalidInput
from cdmo.sim.engine import RunResult
from cdmo.sim.runner import run_policy
from cdmo.sim.scenario import check_policy, load_scenario, parse_duration
from cdmo.sim.workload import generate_workload

sys.path.insert(0, str(Path(__file__).resolve().parent))
# A sibling script, not a package: found through the path set above.
from sweep_simulate import rate_arg, scaled

#: At most this many samples per run: a bound on the work a tiny --step could ask for.
MAX_SAMPLES = 100_000


def running(run: RunResult, times: Sequence[float]) -> dict[str, list[int]]:
    """Profile -> pods of that profile running at each of ``times`` (sorted): a pod runs from its
    start until its end, that instant excluded. One pass over the pods (a difference array per
    profile), so a big run with many samples stays quick."""
    steps: dict[str, list[int]] = {}
    for pod, start in zip(run.pods, run.start_times, strict=True):
        diff = steps.setdefault(pod.profile, [0] * (len(times) + 1))
        if start is None:
            continue
        first = bisect.bisect_left(times, start)
        last = bisect.bisect_left(times, start + pod.duration)
        diff[first] += 1
        diff[last] -= 1
    return {profile: list(itertools.accumulate(diff[:-1])) for profile, diff in sorted(steps.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--rate", type=rate_arg, default=1.0, help="rate multiplier (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="the workload's seed (default the scenario's)")
    parser.add_argument("--policy", action="append", help="policies (default dynamic and first-fit)")
    parser.add_argument("--from", dest="start", default="0s", help="first sample time, e.g. 5h (default 0s)")
    parser.add_argument("--step", default="15m", help="time between samples (default 15m)")
    args = parser.parse_args(argv)
    try:
        scenario = scaled(load_scenario(args.scenario), args.rate)
        start = parse_duration(args.start, "--from", allow_zero=True)
        step = parse_duration(args.step, "--step")
        policies = [
            check_policy(name, scenario.models, "--policy")
            for name in args.policy or ["dynamic", "first-fit"]
        ]
    except InvalidInput as exc:
        parser.error(str(exc))
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed {args.seed} must be >= 0")
    if start >= scenario.duration:
        parser.error(f"--from {args.start} is not before the end of the run ({scenario.duration:g} s)")
    samples = int((scenario.duration - start) // step) + 1
    if samples > MAX_SAMPLES:
        parser.error(f"--step {args.step} gives {samples} samples; at most {MAX_SAMPLES}: take a longer step")
    times = [start + i * step for i in range(samples) if start + i * step < scenario.duration]
    pods = generate_workload(scenario, seed=args.seed, duration=scenario.duration)
    print(
        f"{scenario.name} x{args.rate:g}, seed {scenario.seed if args.seed is None else args.seed}: "
        f"pods running from {args.start} to the end, every {args.step} (least-most)"
    )
    for name in policies:
        run = run_policy(scenario, pods, name, horizon=scenario.duration)
        cells = [f"{profile} {min(c)}-{max(c)}" for profile, c in running(run, times).items()]
        print(f"  {name:22s} " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
