"""The nos model: geometry choice, planner, agent with auto-placement, and the cluster-wide gate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cdmo.mig.catalog import get_model
from cdmo.mig.layouts import Instance, is_valid_layout
from cdmo.sim.engine import Simulation
from cdmo.sim.firstfit import (
    CandidatePod,
    FirstFitPolicy,
    GpuGeometry,
    allowed_geometries,
    apply_geometry,
    auto_place,
    initial_geometry,
    plan_first_fit,
)
from cdmo.sim.scenario import parse_scenario
from cdmo.sim.workload import PodSpec, generate_workload

H100 = get_model("h100-80gb")
A100 = get_model("a100-40gb")


def place_all(model: Any, profiles: list[str]) -> list[Instance | None]:
    made: list[Instance] = []
    out: list[Instance | None] = []
    for p in profiles:
        start = auto_place(model, made, p)
        out.append(None if start is None else Instance(p, start))
        if start is not None:
            made.append(Instance(p, start))
    return out


def test_auto_placement_matches_the_observed_driver_order() -> None:
    # nvidia-smi mig -cgi 19,14,5 on an A100-40GB: 1g@6, 2g@4, 4g@0.
    assert place_all(A100, ["1g.5gb", "2g.10gb", "4g.20gb"]) == [
        Instance("1g.5gb", 6),
        Instance("2g.10gb", 4),
        Instance("4g.20gb", 0),
    ]
    # -cgi 19,19,14,9 fails at the 3g: 1g@6, 1g@4, 2g@0.
    assert place_all(A100, ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]) == [
        Instance("1g.5gb", 6),
        Instance("1g.5gb", 4),
        Instance("2g.10gb", 0),
        None,
    ]
    assert [i.start for i in place_all(H100, ["1g.10gb"] * 7) if i] == [6, 4, 5, 0, 1, 2, 3]


def test_allowed_geometries_are_maximal_and_start_with_one_7g() -> None:
    geos = allowed_geometries("h100-80gb")
    assert len(geos) == 28
    assert initial_geometry("h100-80gb") == (("7g.80gb", 1),)
    assert (("1g.10gb", 7),) in geos


def test_update_geometry_keeps_used_devices_and_adds_the_most_required() -> None:
    gpu = GpuGeometry(H100, used={"1g.10gb": 1}, free={})
    assert gpu.update_geometry_for({"4g.40gb": 1, "1g.10gb": 2})
    geo = gpu.geometry()
    assert geo["4g.40gb"] == 1 and geo["1g.10gb"] >= 3  # one used kept, two more for the pods
    assert gpu.used == {"1g.10gb": 1}


def test_update_geometry_refuses_what_cannot_keep_used_devices() -> None:
    gpu = GpuGeometry(H100, used={"7g.80gb": 1}, free={})
    assert not gpu.update_geometry_for({"1g.10gb": 1})
    assert gpu.geometry() == {"7g.80gb": 1}


def test_planner_visits_nodes_in_name_order_and_stops_when_nothing_lacks() -> None:
    free_7g = [GpuGeometry(H100, used={}, free={"7g.80gb": 1})]
    nodes = [("a", free_7g), ("b", free_7g), ("c", free_7g)]
    plan = plan_first_fit(nodes, [CandidatePod(0, "1g.10gb", 1, 0)])
    assert list(plan) == ["a"]
    assert plan["a"][0].get("1g.10gb", 0) >= 1 and "7g.80gb" not in plan["a"][0]


def test_planner_does_nothing_when_free_devices_cover_each_pod() -> None:
    # nos counts lacking profiles per pod against the cluster's free devices.
    nodes = [("a", [GpuGeometry(H100, used={}, free={"1g.10gb": 1})])]
    assert plan_first_fit(nodes, [CandidatePod(0, "1g.10gb", 1, 0), CandidatePod(1, "1g.10gb", 1, 0)]) == {}


def test_planner_skips_a_node_that_serves_no_pod() -> None:
    busy = [GpuGeometry(H100, used={"7g.80gb": 1}, free={})]
    free = [GpuGeometry(H100, used={}, free={"7g.80gb": 1})]
    plan = plan_first_fit([("a", busy), ("b", free)], [CandidatePod(0, "4g.40gb", 1, 0)])
    assert list(plan) == ["b"] and plan["b"][0].get("4g.40gb") == 1


def test_agent_recreates_free_devices_with_the_new_ones() -> None:
    free_1g = (Instance("1g.10gb", 6), False, "h1")
    out = apply_geometry(H100, [free_1g], {"1g.10gb": 2, "3g.40gb": 1, "2g.20gb": 1})
    assert out.destroy == ["h1"] and not out.failed
    assert sorted(i.profile for i in out.create) == ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"]
    assert is_valid_layout(H100, out.create)
    assert (out.gi_created, out.gi_destroyed) == (4, 1)


def test_agent_never_deletes_used_devices_and_fails_when_placement_is_blocked() -> None:
    used_1g = (Instance("1g.10gb", 0), True, "h1")
    out = apply_geometry(H100, [used_1g], {"1g.10gb": 1, "4g.40gb": 1})
    # A 4g only starts at 0, where the used 1g sits: counts without placements cannot see that.
    assert out.failed and out.create == [] and out.destroy == []
    assert out.gi_created == 0


def scenario(**extra: Any) -> Any:
    return parse_scenario(
        {
            "duration": "3h",
            "fleet": [{"name": "n", "model": "h100-80gb", "count": 3, "gpus": 2}],
            "workload": {
                "rate_per_hour": 60,
                "mix": [
                    {"queue": "slice-1", "duration": {"median": "20m", "sigma": 0.5}},
                    {"queue": "slice-4", "duration": {"median": "30m", "sigma": 0.5}},
                ],
            },
            **extra,
        },
        base_dir=Path("/"),
    )


class Recording(FirstFitPolicy):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.planned_while_in_flight = 0
        self.plan_times: list[float] = []

    def _plan(self) -> None:
        self.planned_while_in_flight += bool(self.in_flight)
        self.plan_times.append(self.sim.now)
        super()._plan()


def test_one_cluster_wide_gate_and_no_disruption() -> None:
    sc = scenario()
    policy = Recording(sc.first_fit, sc.time_model)
    run = Simulation(sc, generate_workload(sc, seed=1), policy).run()
    assert policy.plans > 3
    assert policy.planned_while_in_flight == 0
    assert run.disrupted == 0
    # Every change takes at least the device-plugin pod restart (30 s), so plans are that far apart.
    gaps = [b - a for a, b in zip(policy.plan_times, policy.plan_times[1:], strict=False)]
    assert min(gaps) >= 10.0


def test_every_gpu_starts_with_one_7g() -> None:
    sc = scenario()
    sim = Simulation(
        sc, [PodSpec(0, "p", 10, "1g.10gb", 1, 60, 0)], FirstFitPolicy(sc.first_fit, sc.time_model)
    )
    assert {g.layout() for n in sim.nodes for g in n.gpus} == {(Instance("7g.80gb", 0),)}


def test_planner_leaves_its_inputs_as_they_were() -> None:
    # The policy hands the same view objects to plan after plan: the planner must only read them.
    busy = [GpuGeometry(H100, used={"3g.40gb": 1}, free={"1g.10gb": 1}), GpuGeometry(H100, used={}, free={})]
    free = [GpuGeometry(H100, used={}, free={"7g.80gb": 1})]
    nodes = [("a", busy), ("b", free)]
    before = [(name, [(dict(g.used), dict(g.free)) for g in gpus]) for name, gpus in nodes]
    plan = plan_first_fit(nodes, [CandidatePod(0, "4g.40gb", 1, 0), CandidatePod(1, "1g.10gb", 2, 0)])
    assert plan, "the planner changed nothing: the test did not exercise a trial"
    assert [(name, [(g.used, g.free) for g in gpus]) for name, gpus in nodes] == before


class ComparingViews(FirstFitPolicy):
    """Checks before every plan that the kept per-node views equal views built afresh."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.compared = 0
        self.mismatches = 0

    def _plan(self) -> None:
        for node in self.sim.nodes:
            fresh = [
                (
                    {
                        p: n
                        for p, n in Counter(
                            i.profile for i in g.instances.values() if i.holder is not None
                        ).items()
                    },
                    {
                        p: n
                        for p, n in Counter(
                            i.profile for i in g.instances.values() if i.holder is None
                        ).items()
                    },
                )
                for g in node.gpus
            ]
            kept = [(v.used, v.free) for v in self._gpu_view(node)]
            self.compared += 1
            self.mismatches += kept != fresh
        super()._plan()


def test_kept_views_equal_fresh_ones_before_every_plan() -> None:
    sc = scenario()
    policy = ComparingViews(sc.first_fit, sc.time_model)
    run = Simulation(sc, generate_workload(sc, seed=1), policy).run()
    assert policy.plans > 3 and run.reconfigurations > 0 and policy.compared > 0
    assert policy.mismatches == 0
