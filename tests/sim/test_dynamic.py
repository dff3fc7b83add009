"""The dynamic policy: the real planner and node agent on simulated GPUs, kept in step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdmo.config import OperatorConfig
from cdmo.mig.layouts import is_valid_layout
from cdmo.planner import parse_snapshot, plan
from cdmo.sim.dynamic import DynamicPolicy
from cdmo.sim.engine import Simulation
from cdmo.sim.policies import make_policy
from cdmo.sim.scenario import load_scenario, parse_scenario
from cdmo.sim.workload import PodSpec, generate_workload


def scenario(**extra: Any) -> Any:
    return parse_scenario(
        {
            "duration": "2h",
            "fleet": [
                {"name": "a", "model": "a100-40gb", "count": 1, "gpus": 2},
                {"name": "h", "model": "h100-80gb", "count": 2, "gpus": 2},
            ],
            "workload": {
                "streams": [
                    {
                        "name": "mix",
                        "rate_per_hour": 40,
                        "mix": [
                            {"profile": "1g.10gb", "duration": {"median": "10m", "sigma": 0.8}},
                            {"profile": "1g.5gb", "duration": {"median": "10m", "sigma": 0.8}},
                            {"profile": "3g.40gb", "duration": {"median": "15m", "sigma": 0.8}},
                            {
                                "profile": "7g.80gb",
                                "duration": {"median": "20m", "sigma": 0.5},
                                "priority": 3,
                            },
                        ],
                    }
                ]
            },
            **extra,
        },
        base_dir=Path("/"),
    )


class Checking(DynamicPolicy):
    """Checks after every plan that the agent's GPUs and the simulator's agree, and layouts are valid."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.problems: list[str] = []
        self.snapshots_checked = 0

    def _plan(self, *, idle: bool = False) -> None:
        pods = [p for p in self.sim.unschedulable_pods() if p not in self._promised]
        if pods and self.snapshots_checked < 5:
            # The incremental snapshot must be exactly what parsing the whole dict gives.
            assert self.parsed_snapshot(pods) == parse_snapshot(self.build_snapshot(pods))
            self.snapshots_checked += 1
        super()._plan(idle=idle)
        self.problems.extend(self.backend_mismatches())
        for node in self.sim.nodes:
            for gpu in node.gpus:
                if not is_valid_layout(gpu.model, gpu.layout()):
                    self.problems.append(f"{node.name}/{gpu.index} holds an invalid layout {gpu.layout()}")


def test_dynamic_keeps_agent_and_simulator_in_step_and_disrupts_nothing() -> None:
    sc = scenario()
    policy = Checking(sc.dynamic, sc.time_model)
    run = Simulation(sc, generate_workload(sc, seed=2), policy).run()
    assert policy.plans > 10 and policy.snapshots_checked == 5
    assert policy.problems == []
    assert run.disrupted == 0
    assert run.gi_created > 0 and run.reconfigurations > 0
    assert policy.agent_blocked == 0 and policy.agent_errors == 0
    assert sum(s is not None for s in run.start_times) > 0.9 * len(run.pods)


def test_time_model_sets_when_a_new_instance_is_usable() -> None:
    # Empty GPUs: the first pod waits the batch idle window (5 s), one GI create (1 s),
    # the built-in plugin's advertisement (0.2 s), then the scheduler's retry (1 s). Pre-warming
    # off: it would create a second 7g.80gb on the same node (one more GI create, 1 s).
    sc = scenario()
    cold = OperatorConfig(prewarm=False)
    run = Simulation(
        sc, [PodSpec(0, "p", 100, "7g.80gb", 1, 600, 0)], DynamicPolicy(sc.dynamic, sc.time_model, cold)
    ).run()
    assert run.start_times == [pytest.approx(107.2)]
    # dynamic-sighup: NVIDIA's plugin refreshed by SIGHUP (5 s) instead; with the operator's
    # defaults, so pre-warming's second 7g.80gb create comes first (1 s more).
    run = Simulation(
        sc, [PodSpec(0, "p", 100, "7g.80gb", 1, 600, 0)], make_policy("dynamic-sighup", sc)
    ).run()
    assert run.start_times == [113.0]
    slow = scenario(
        time_model={"gi_create_seconds": 4, "sighup_refresh_seconds": 20}, dynamic={"refresh": "sighup"}
    )
    run = Simulation(
        slow, [PodSpec(0, "p", 100, "7g.80gb", 1, 600, 0)], DynamicPolicy(slow.dynamic, slow.time_model, cold)
    ).run()
    assert run.start_times == [130.0]
    warm = Simulation(
        sc, [PodSpec(0, "p", 100, "7g.80gb", 1, 600, 0)], DynamicPolicy(sc.dynamic, sc.time_model)
    ).run()
    # pre-warming on (the operator's default): a second 7g.80gb is made first (1 s more)
    assert warm.start_times == [pytest.approx(108.2)] and warm.gi_created == 2


def test_a_pod_no_gpu_can_hold_never_starts_and_costs_nothing() -> None:
    sc = scenario()
    policy = DynamicPolicy(sc.dynamic, sc.time_model)
    # 1g.5gb exists only on the A100-40GB node; ask for more than its two GPUs can hold at once.
    pods = [PodSpec(i, f"p{i}", 10, "1g.5gb", 1, 9000, 0) for i in range(15)]
    run = Simulation(sc, pods, policy).run()
    assert sum(s is not None for s in run.start_times) == 14  # 7 per A100-40GB GPU
    assert run.disrupted == 0


def _one_gpu() -> Any:
    return parse_scenario(
        {
            "duration": "2h",
            "fleet": [{"name": "h", "model": "h100-80gb", "count": 1, "gpus": 1}],
            "workload": {"rate_per_hour": 1, "mix": [{"profile": "1g.10gb", "duration": "10m"}]},
        },
        base_dir=Path("/"),
    )


def test_a_drained_gpu_goes_to_the_large_pod_before_later_small_ones() -> None:
    # Three 1g pods hold the only GPU; a 7g pod waits; a 1g pod arrives after the first 1g ends.
    # Draining: the freed 1g is destroyed at once and the later 1g is kept off the GPU, so the 7g
    # runs when the last 1g ends. Without draining the later 1g takes the freed instance first.
    sc = _one_gpu()
    pods = [
        PodSpec(0, "a", 0, "1g.10gb", 1, 100, 0),
        PodSpec(1, "b", 1, "1g.10gb", 1, 200, 0),
        PodSpec(2, "c", 2, "1g.10gb", 1, 300, 0),
        PodSpec(3, "big", 20, "7g.80gb", 1, 100, 0),
        PodSpec(4, "late", 150, "1g.10gb", 1, 1000, 0),
    ]
    quiet = {"prewarm": False, "defrag_ops_per_hour": 0}
    drain = DynamicPolicy(sc.dynamic, sc.time_model, OperatorConfig(drain_after_seconds=0, **quiet))
    run = Simulation(sc, pods, drain).run()
    big, late = run.start_times[3], run.start_times[4]
    assert big is not None and late is not None and big < late and big < 350
    assert drain.drain_destroys >= 1 and run.disrupted == 0
    plain = DynamicPolicy(sc.dynamic, sc.time_model, OperatorConfig(drain_max_fraction=0, **quiet))
    run = Simulation(sc, pods, plain).run()
    big, late = run.start_times[3], run.start_times[4]
    assert late is not None and (big is None or late < big)


class CheckingEveryPlan(DynamicPolicy):
    """Compares the incremental snapshot with a full parse before every plan of a run."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.compared = 0
        self.mismatches = 0

    def _plan(self, *, idle: bool = False) -> None:
        pods = [p for p in self.sim.unschedulable_pods() if p not in self._promised]
        self.compared += 1
        self.mismatches += self.parsed_snapshot(pods) != parse_snapshot(self.build_snapshot(pods))
        super()._plan(idle=idle)


def test_incremental_snapshot_equals_a_full_parse_before_every_plan() -> None:
    # Pods start and end on single GPUs between plans: nodes are rebuilt from parsed GPUs that
    # the memo kept, which must be exactly what parsing the whole dict gives.
    sc = scenario()
    policy = CheckingEveryPlan(sc.dynamic, sc.time_model)
    run = Simulation(sc, generate_workload(sc, seed=3), policy).run()
    assert policy.compared > 20 and run.reconfigurations > 0
    assert policy.mismatches == 0
    assert policy._gpu_memo, "nodes were never rebuilt GPU by GPU: the test did not reach the memo"


def test_a_run_leaves_the_collector_as_it_found_it() -> None:
    import gc

    sc = scenario()
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    Simulation(sc, generate_workload(sc, seed=2), DynamicPolicy(sc.dynamic, sc.time_model)).run()
    assert gc.get_freeze_count() == 0 and gc.isenabled() and gc.get_threshold() == thresholds


class ShadowingVoidPlans(DynamicPolicy):
    """Runs the whole plan each time an idle plan is found void, and records what it changed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.void = 0
        self.not_void = 0
        self.void_but_changed = 0

    def _idle_plan_is_void(self, snapshot: Any, options: Any) -> bool:
        void = super()._idle_plan_is_void(snapshot, options)
        if void:
            self.void += 1
            result = plan(snapshot, options)
            self.void_but_changed += bool(
                any(n.changed for n in result.nodes) or result.draining or result.assignments
            )
        else:
            self.not_void += 1
        return void


class NeverSkipping(DynamicPolicy):
    def _idle_plan_is_void(self, snapshot: Any, options: Any) -> bool:
        return False


@pytest.fixture(scope="module")
def mixed_fleet() -> tuple[Any, list[PodSpec]]:
    sc = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "mixed-fleet.yaml")
    return sc, generate_workload(sc, duration=8 * 3600)


def test_an_idle_plan_found_void_would_have_changed_nothing(mixed_fleet: tuple[Any, list[PodSpec]]) -> None:
    sc, pods = mixed_fleet
    policy = ShadowingVoidPlans(sc.dynamic, sc.time_model)
    Simulation(sc, pods, policy, horizon=8 * 3600).run()
    # Both answers occur: plans left out, and idle plans that defragment (so they must run).
    assert policy.void > 10 and policy.not_void > 0 and policy.idle_ops > 0
    assert policy.void_but_changed == 0


def test_leaving_out_void_idle_plans_changes_no_result(mixed_fleet: tuple[Any, list[PodSpec]]) -> None:
    sc, pods = mixed_fleet
    runs = {}
    for cls in (DynamicPolicy, NeverSkipping):
        policy = cls(sc.dynamic, sc.time_model)
        run = Simulation(sc, pods, policy, horizon=8 * 3600).run()
        runs[cls] = (policy, run)
    (skipping, a), (full, b) = runs[DynamicPolicy], runs[NeverSkipping]
    assert skipping.idle_plans_skipped > 10 and full.idle_plans_skipped == 0
    assert a.start_times == b.start_times
    assert (a.reconfigurations, a.gi_created, a.gi_destroyed, a.disrupted, a.util_total) == (
        b.reconfigurations,
        b.gi_created,
        b.gi_destroyed,
        b.disrupted,
        b.util_total,
    )
    assert skipping.idle_ops == full.idle_ops and skipping.plans + skipping.idle_plans_skipped == full.plans
