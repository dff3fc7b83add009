"""Load sweep of a simulator scenario: several arrival rates x seeds x policies, paired.

    .venv/bin/python scripts/sweep_simulate.py examples/clearml-queues.yaml \
        --rate 1.0 --rate 1.2 --rate 1.4 --seeds 100-109 --policy dynamic --policy first-fit \
        --json sweep.json

Every stream's ``rate_per_hour`` is multiplied by each ``--rate``; every policy replays the same
workload per seed (as ``cdmo simulate`` does). Printed per rate: the offered load (the work the
pods bring in compute-slice time, over the fleet's: above 100% the fleet falls behind whatever the
policy), slice utilization, p95 pending of each policy (median over seeds), the geometric mean
over seeds of each policy's p95 over the first policy's, the seeds where it is the lower, and the
mean wait per profile. ``--json`` keeps every figure, so docs/simulate.md's sweep tables can be
redrawn from it (scripts/regenerate_results.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdmo.config import OperatorConfig
from cdmo.errors import InvalidInput
from cdmo.sim.engine import RunResult
from cdmo.sim.metrics import pending_times, percentile, summarize
from cdmo.sim.runner import run_policy
from cdmo.sim.scenario import Scenario, check_policy, load_scenario
from cdmo.sim.workload import PodSpec, generate_workload, offered_slice_seconds

#: The policy name of the ideal fleet (no placement rules, no reconfiguration time).
IDEAL = "ideal"

#: Seconds added before taking logs, so that a p95 of 0 s still gives a finite ratio.
RATIO_FLOOR_SECONDS = 1.0


def scaled(scenario: Scenario, factor: float) -> Scenario:
    """``scenario`` with every stream's arrival rate multiplied by ``factor``."""
    streams = tuple(dataclasses.replace(s, rate_per_hour=s.rate_per_hour * factor) for s in scenario.streams)
    return dataclasses.replace(scenario, streams=streams)


def equal_priority(scenario: Scenario) -> Scenario:
    """``scenario`` with every pod at priority 0: the same pods, durations and arrivals.

    A counterfactual for reading a sweep: p95 pending counts every pod alike, while strict
    priority (spec/planner-io.md) serves a higher level first however few pods it has. Run with
    and without this to see how much of a ratio comes from who is served first rather than from
    how much is served.
    """
    streams = tuple(
        dataclasses.replace(s, mix=tuple(dataclasses.replace(m, priority=0) for m in s.mix))
        for s in scenario.streams
    )
    return dataclasses.replace(scenario, streams=streams)


def profile_waits(run: Any) -> dict[str, float]:
    """Mean seconds waited per profile (pods that never started count until the horizon)."""
    waits: dict[str, list[float]] = defaultdict(list)
    for pod, start in zip(run.pods, run.start_times, strict=True):
        waits[pod.profile].append((run.horizon if start is None else start) - pod.arrival)
    return {p: round(sum(w) / len(w), 1) for p, w in sorted(waits.items())}


def ideal_run(scenario: Scenario, pods: Sequence[PodSpec], horizon: float) -> RunResult:
    """The same pods on an ideal fleet: no placement rules, no reconfiguration time.

    Each GPU is two pools, its placement units and its compute slices; a device takes its
    profile's size in units and its compute slices anywhere on any GPU of a model that offers the
    profile, up to the profile's most instances per GPU (a pod's devices on one node), at once.
    The pools keep the hardware's capacity (an H100 holds seven 1g.10gb, not eight, although it
    has eight units); only where instances may start is gone. Pending pods are tried by priority
    then arrival whenever a pod ends, each on the first node with room (no head-of-line
    blocking, as kube-scheduler). Not a bound on what a policy can reach: it never holds room
    back for a large pod, so small pods can keep a whole-GPU pod waiting.
    """
    # (node, model, per GPU: [free units, free compute slices, {profile: instances}])
    gpus: list[tuple[int, Any, list[list[Any]]]] = []
    for n, (group, index) in enumerate((g, i) for g in scenario.fleet for i in range(g.count)):
        del index
        model = group.model
        gpus.append(
            (
                n,
                model,
                [[model.placement_axis_size, model.compute_slices_total, {}] for _ in range(group.gpus)],
            )
        )
    start: list[float | None] = [None] * len(pods)
    slices_held = [0] * len(pods)  # compute slices of each started pod's devices
    held: dict[int, tuple[int, list[tuple[int, Any]]]] = {}
    events: list[tuple[float, int]] = []  # (end time, pod)
    waiting: list[int] = []
    util = 0.0
    total = sum(len(state) * model.compute_slices_total for _, model, state in gpus)
    # Free compute slices per node: a node without enough for the pod is passed over unscanned.
    node_free = [len(state) * model.compute_slices_total for _, model, state in gpus]
    profiles: dict[tuple[str, str], Any] = {}  # (model, profile) -> the profile, or None

    def try_place(pid: int, now: float) -> bool:
        pod = pods[pid]
        for n, model, state in gpus:
            key = (model.key, pod.profile)
            if key not in profiles:
                profiles[key] = model.profile(pod.profile) if model.has_profile(pod.profile) else None
            profile = profiles[key]
            if profile is None or node_free[n] < profile.compute_slices * pod.count:
                continue
            units, slices, name = profile.placement_size, profile.compute_slices, profile.name
            taken: list[tuple[int, Any]] = []
            # Take device by device on the node's own state; give back if the pod does not fit.
            for _ in range(pod.count):
                spot = next(
                    (
                        g
                        for g, gpu in enumerate(state)
                        if gpu[0] >= units and gpu[1] >= slices and gpu[2].get(name, 0) < profile.max_count
                    ),
                    None,
                )
                if spot is None:
                    break
                _take(state[spot], profile, 1)
                taken.append((spot, profile))
            if len(taken) == pod.count:
                node_free[n] -= slices * pod.count
                slices_held[pid] = slices * pod.count
                held[pid] = (n, taken)
                start[pid] = now
                heapq.heappush(events, (now + pod.duration, pid))
                return True
            for spot, given in taken:
                _take(state[spot], given, -1)
        return False

    order = sorted(range(len(pods)), key=lambda p: pods[p].arrival)
    nxt = 0
    while True:
        t_arr = pods[order[nxt]].arrival if nxt < len(order) else math.inf
        t_end = events[0][0] if events else math.inf
        now = min(t_arr, t_end)
        if now >= horizon:
            break
        if t_arr <= t_end:
            pid = order[nxt]
            nxt += 1
            if not try_place(pid, now):
                waiting.append(pid)
            continue
        _, pid = heapq.heappop(events)
        n, taken = held.pop(pid)
        for spot, profile in taken:
            _take(gpus[n][2][spot], profile, -1)
            node_free[n] += profile.compute_slices
        waiting.sort(key=lambda p: (-pods[p].priority, pods[p].arrival, p))
        # Placing only takes room, so once a kind of pod fails in this pass the later ones of
        # that kind fail too: they are kept without trying (the same starts, far fewer scans).
        failed: set[tuple[str, int]] = set()
        still: list[int] = []
        for p in waiting:
            kind = (pods[p].profile, pods[p].count)
            if kind in failed or not try_place(p, now):
                failed.add(kind)
                still.append(p)
        waiting = still
    for pid, t0 in enumerate(start):
        if t0 is not None:
            util += slices_held[pid] * (min(t0 + pods[pid].duration, horizon) - t0)
    return RunResult(
        policy=IDEAL,
        horizon=horizon,
        pods=pods,
        start_times=start,
        disrupted=0,
        reconfigurations=0,
        gi_created=0,
        gi_destroyed=0,
        total_slices=total,
        util_total=util,
        offered_slice_seconds=offered_slice_seconds(pods, scenario.models, horizon),
        util_series=[0.0],
        util_bucket_seconds=horizon,
        wall_seconds=0.0,
        cpu_seconds=0.0,
    )


def _take(gpu: list[Any], profile: Any, sign: int) -> None:
    """Take (``sign`` 1) or give back (-1) one ``profile`` device on an ideal GPU's pools."""
    gpu[0] -= sign * profile.placement_size
    gpu[1] -= sign * profile.compute_slices
    gpu[2][profile.name] = gpu[2].get(profile.name, 0) + sign


def run_one(
    scenario: Scenario, seed: int, policies: list[str], operator: OperatorConfig | None = None
) -> dict[str, Any]:
    pods = generate_workload(scenario, seed=seed, duration=scenario.duration)
    out: dict[str, Any] = {}
    for name in policies:
        if name == IDEAL:
            run = ideal_run(scenario, pods, scenario.duration)
        else:
            run = run_policy(scenario, pods, name, horizon=scenario.duration, operator=operator)
        summary = summarize(run)
        waits = pending_times(run)
        out[name] = {
            "p95": percentile(waits, 95),
            "p99": percentile(waits, 99),
            "mean": summary["pending_seconds"]["mean"],
            "utilization": summary["utilization"],
            "offered_load": summary["offered_load"],
            "started": summary["pods"]["started"],
            "submitted": summary["pods"]["submitted"],
            "disrupted": summary["disrupted_pods"],
            "by_profile_mean_wait": profile_waits(run),
        }
    return out


def geomean_ratio(rows: list[dict[str, Any]], policy: str, base: str, key: str = "p95") -> float:
    logs = [
        math.log((r[policy][key] + RATIO_FLOOR_SECONDS) / (r[base][key] + RATIO_FLOOR_SECONDS)) for r in rows
    ]
    return math.exp(sum(logs) / len(logs))


def operator_config(pairs: list[str]) -> OperatorConfig:
    """The operator's configuration with these ``FIELD=VALUE`` pairs changed (the operator's
    own parsing of its environment, so values read as the chart's settings do).

    Raises ValueError with a message that names the bad pair.
    """
    env_of = dict(OperatorConfig.ENV)
    env = {}
    for pair in pairs:
        field_name, sep, value = pair.partition("=")
        if not sep or field_name not in env_of:
            raise ValueError(
                f"--operator {pair!r}: give FIELD=VALUE with FIELD one of {', '.join(sorted(env_of))}"
            )
        try:  # each pair alone, so that an error names its own pair
            OperatorConfig.from_env({env_of[field_name]: value})
        except InvalidInput as exc:  # "environment variable X='v' is not a valid bool"
            raise ValueError(f"--operator {pair!r}: {str(exc).split(' is ', 1)[-1]}") from None
        env[env_of[field_name]] = value
    return OperatorConfig.from_env(env)


#: Bounds on a sweep's size: each seed and each rate is a full simulation per policy, and a rate
#: far above the scenario's own makes a workload no run would finish in time.
MAX_SEEDS = 1000
MAX_RATE = 10.0


def seeds_arg(text: str) -> list[int]:
    """``--seeds``: a range ``100-109`` or a list ``1,2,3`` of non-negative seeds."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            seeds = list(range(lo, hi + 1)) if 0 <= lo <= hi and hi - lo < MAX_SEEDS else []
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(seeds) > MAX_SEEDS or min(seeds) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a range LO-HI (LO <= HI) or a list 1,2,3 of at most {MAX_SEEDS} seeds, each >= 0"
        )
    return seeds


def seeds_text(seeds: Sequence[int]) -> str:
    """Seeds as ``--seeds`` takes them: ``100-109`` for a run of consecutive ones, else ``1,5,9``."""
    if list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def rate_arg(text: str) -> float:
    """``--rate``: a multiplier of the scenario's arrival rates, above 0 and at most MAX_RATE."""
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 < rate <= MAX_RATE:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: give a multiplier above 0 and at most {MAX_RATE:g}")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", type=Path)
    parser.add_argument(
        "--rate", type=rate_arg, action="append", help=f"rate multipliers, at most {MAX_RATE:g} (default 1.0)"
    )
    parser.add_argument("--seeds", default="100-104", type=seeds_arg, help="a range 100-109 or a list 1,2,3")
    parser.add_argument(
        "--policy", action="append", help="policies (or 'ideal'); the first is the base of the ratios"
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--equal-priority",
        action="store_true",
        help="run every pod at priority 0 (a counterfactual: what strict priority costs the p95)",
    )
    parser.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="run dynamic with this cdmo.config.OperatorConfig field changed (e.g. prewarm=false)",
    )
    args = parser.parse_args(argv)
    try:
        operator = operator_config(args.operator) if args.operator else None
    except ValueError as exc:
        parser.error(str(exc))
    policies = args.policy or ["first-fit", "dynamic"]
    try:
        base_scenario = load_scenario(args.scenario)
    except InvalidInput as exc:  # a missing file or a bad field: one line, as cdmo simulate says it
        parser.error(str(exc))
    try:
        for name in policies:
            if name != IDEAL:
                check_policy(name, base_scenario.models, "--policy")
    except InvalidInput as exc:  # before any run: a typo must not cost the sweep's first hours
        parser.error(str(exc))
    if args.equal_priority:
        base_scenario = equal_priority(base_scenario)
    seeds: list[int] = args.seeds
    result: dict[str, Any] = {
        "scenario": base_scenario.name,
        "equal_priority": args.equal_priority,
        "seeds": seeds,
        "policies": policies,
        "rates": [],
    }
    for factor in args.rate or [1.0]:
        scenario = scaled(base_scenario, factor)
        rows = [run_one(scenario, seed, policies, operator) for seed in seeds]
        entry: dict[str, Any] = {
            "factor": factor,
            "rate_per_hour": sum(s.rate_per_hour for s in scenario.streams),
            # The same for every policy (one workload per seed): the first policy's runs say it.
            "offered_load": round(statistics.mean(r[policies[0]]["offered_load"] for r in rows), 4),
            "runs": dict(zip((str(s) for s in seeds), rows, strict=True)),
            "policies": {},
        }
        for name in policies:
            p95s = [r[name]["p95"] for r in rows]
            per_profile: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                for prof, w in r[name]["by_profile_mean_wait"].items():
                    per_profile[prof].append(w)
            entry["policies"][name] = {
                "utilization": round(statistics.mean(r[name]["utilization"] for r in rows), 4),
                "p95_median": statistics.median(p95s),
                "mean_wait": round(statistics.mean(r[name]["mean"] for r in rows), 1),
                "p95_ratio_geomean": round(geomean_ratio(rows, name, policies[0]), 3),
                "mean_ratio_geomean": round(geomean_ratio(rows, name, policies[0], "mean"), 3),
                "seeds_lower_or_equal": sum(1 for r in rows if r[name]["p95"] <= r[policies[0]]["p95"]),
                "by_profile_mean_wait": {
                    p: round(statistics.mean(w), 1) for p, w in sorted(per_profile.items())
                },
                "disrupted": sum(r[name]["disrupted"] for r in rows),
            }
        result["rates"].append(entry)
        every = ", every pod at priority 0" if args.equal_priority else ""
        print(
            f"{scenario.name} x{factor} ({entry['rate_per_hour']:.0f} pods/hour{every}, offered load "
            f"{entry['offered_load']:.1%} of the fleet's slices), seeds {seeds_text(seeds)}:"
        )
        for name, fig in entry["policies"].items():
            print(
                f"  {name:22s} util {fig['utilization']:.1%}  p95 median {fig['p95_median']:8.1f} s  "
                f"p95 ratio {fig['p95_ratio_geomean']:.3f}  mean ratio {fig['mean_ratio_geomean']:.3f}  "
                f"lower/equal {fig['seeds_lower_or_equal']}/{len(seeds)}  waits {fig['by_profile_mean_wait']}"
            )
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
