"""Run a scenario: generate its workload once, replay it for every policy, summarize each run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cdmo.config import OperatorConfig
from cdmo.sim.engine import RunResult, Simulation
from cdmo.sim.metrics import summarize
from cdmo.sim.policies import make_policy
from cdmo.sim.scenario import Scenario, check_policies
from cdmo.sim.workers import PolicyWorkers, Progress
from cdmo.sim.workload import PodSpec, generate_workload

__all__ = ["Progress", "Report", "run_policy", "simulate"]


@dataclass(frozen=True)
class Report:
    scenario: Scenario
    seed: int
    horizon: float
    pods: tuple[PodSpec, ...]
    runs: dict[str, RunResult]
    summaries: dict[str, dict[str, Any]]


def run_policy(
    scenario: Scenario,
    pods: Sequence[PodSpec],
    policy: str,
    *,
    horizon: float | None = None,
    progress: Callable[[float], None] | None = None,
    operator: OperatorConfig | None = None,
) -> RunResult:
    """One policy over ``pods`` on a fresh fleet (``operator``: see :func:`make_policy`)."""
    sim = Simulation(
        scenario, pods, make_policy(policy, scenario, operator), horizon=horizon, progress=progress
    )
    return sim.run()


def simulate(
    scenario: Scenario,
    *,
    policies: Sequence[str] | None = None,
    seed: int | None = None,
    duration: float | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> Report:
    """Every policy of ``scenario`` (or ``policies``) on the same workload; deterministic for a seed.

    ``jobs`` > 1 runs up to that many policies at once in worker processes
    (:mod:`cdmo.sim.workers`); every figure but the measured times is the same as with 1.
    """
    names = check_policies(
        tuple(policies) if policies else scenario.policies,
        scenario.models,
        "--policy" if policies else "policies",
    )
    use_seed = scenario.seed if seed is None else seed
    horizon = scenario.duration if duration is None else duration
    runs: dict[str, RunResult] = {}
    if jobs > 1 and len(names) > 1:
        # The workers start, and import cdmo, while this process generates the workload.
        with PolicyWorkers(min(jobs, len(names)), with_progress=progress is not None) as workers:
            pods = generate_workload(scenario, seed=use_seed, duration=horizon)
            runs = workers.run(scenario, pods, names, horizon=horizon, progress=progress)
    else:
        pods = generate_workload(scenario, seed=use_seed, duration=horizon)
        for name in names:
            cb = (lambda frac, n=name: progress(n, frac)) if progress is not None else None
            runs[name] = run_policy(scenario, pods, name, horizon=horizon, progress=cb)
    return Report(
        scenario=scenario,
        seed=use_seed,
        horizon=horizon,
        pods=pods,
        runs=runs,
        summaries={name: summarize(run) for name, run in runs.items()},
    )
