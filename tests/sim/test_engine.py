"""The engine on hand-made cases: binding order, retries, utilization, disruption counting."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cdmo.mig.layouts import Instance
from cdmo.sim.engine import Policy, SimGpu, Simulation, build_nodes
from cdmo.sim.metrics import pending_times, percentile, summarize
from cdmo.sim.policies import StaticPolicy
from cdmo.sim.scenario import parse_scenario
from cdmo.sim.workload import PodSpec


def scenario(nodes: int = 2, gpus: int = 1, duration: str = "1h", **extra: Any) -> Any:
    return parse_scenario(
        {
            "duration": duration,
            "fleet": [{"name": "n", "model": "h100-80gb", "count": nodes, "gpus": gpus}],
            "workload": {"rate_per_hour": 1, "mix": [{"queue": "slice-1", "duration": "1m"}]},
            **extra,
        },
        base_dir=Path("/"),
    )


def pods(*rows: tuple[float, str, float]) -> list[PodSpec]:
    return [PodSpec(i, f"p{i}", t, prof, 1, dur, 0) for i, (t, prof, dur) in enumerate(rows)]


class FixedLayout(Policy):
    name = "fixed"

    def __init__(self, layout: Sequence[Instance]) -> None:
        self.layout = tuple(layout)

    def initial_layout(self, gpu: SimGpu) -> Sequence[Instance]:
        return self.layout


def test_nodes_are_named_and_sorted() -> None:
    sc = parse_scenario(
        {
            "duration": "1h",
            "fleet": [
                {"name": "h100", "model": "h100-80gb", "count": 2, "gpus": 1},
                {"name": "a100", "model": "a100-80gb", "count": 11, "gpus": 2},
            ],
            "workload": {"rate_per_hour": 1, "mix": [{"profile": "1g.10gb", "duration": "1m"}]},
        }
    )
    nodes = build_nodes(sc)
    assert [n.name for n in nodes][:3] == ["a100-000", "a100-001", "a100-002"]
    assert [n.name for n in nodes][-2:] == ["h100-000", "h100-001"]
    assert [n.idx for n in nodes] == list(range(13))


def test_first_fitting_node_in_name_order_and_lowest_device() -> None:
    layout = FixedLayout([Instance("1g.10gb", 0), Instance("1g.10gb", 6)])
    sim = Simulation(scenario(), pods((0, "1g.10gb", 7200), (1, "1g.10gb", 7200)), layout)
    run = sim.run()
    assert run.start_times == [0.0, 1.0]
    devices = {pid: [(d.gpu.node.name, d.start) for d in devs] for pid, devs in sim.pod_devices.items()}
    assert devices == {0: [("n-000", 0)], 1: [("n-000", 6)]}


def test_a_pod_waits_for_a_freed_instance_plus_the_retry_interval() -> None:
    sc = scenario(nodes=1, scheduler={"retry_seconds": 3})
    run = Simulation(sc, pods((0, "7g.80gb", 100), (10, "7g.80gb", 100)), StaticPolicy("all-7g")).run()
    assert run.start_times == [0.0, 103.0]  # freed at 100, retried 3 s later
    assert percentile(pending_times(run), 100) == 93.0


def test_priority_goes_first_when_retrying() -> None:
    sc = scenario(nodes=1, scheduler={"retry_seconds": 1})
    specs = [
        PodSpec(0, "run", 0, "7g.80gb", 1, 100, 0),
        PodSpec(1, "low", 5, "7g.80gb", 1, 100, 0),
        PodSpec(2, "high", 6, "7g.80gb", 1, 100, 9),
    ]
    run = Simulation(sc, specs, StaticPolicy("all-7g")).run()
    # "run" frees the GPU at 100: "high" goes at 101 although "low" waited longer; "low" at 201 + 1.
    assert run.start_times == [0.0, 202.0, 101.0]


def test_a_profile_the_layout_does_not_offer_never_starts() -> None:
    run = Simulation(
        scenario(), pods((0, "4g.40gb", 60), (0, "1g.10gb", 60)), StaticPolicy("all-balanced")
    ).run()
    assert run.start_times == [None, 0.0]
    s = summarize(run)
    assert s["pods"] == {"submitted": 2, "started": 1, "never_started": 1}
    assert s["pending_seconds"]["max"] == 3600.0  # censored at the end


def test_utilization_is_time_weighted_over_the_fleet() -> None:
    # One 7g pod holds 7 of 14 slices for half the hour: 25 %.
    run = Simulation(scenario(), pods((0, "7g.80gb", 1800)), StaticPolicy("all-7g")).run()
    assert summarize(run)["utilization"] == 0.25
    series = [round(x, 3) for x in (run.util_series[0], run.util_series[-1])]
    assert series[0] > 0 and series[1] == 0


def test_pods_after_the_horizon_are_not_submitted() -> None:
    run = Simulation(
        scenario(duration="10m"), pods((0, "1g.10gb", 5), (700, "1g.10gb", 5)), StaticPolicy("all-1g")
    ).run()
    assert summarize(run)["pods"]["submitted"] == 1


class Wrecker(Policy):
    """Destroys every instance of the first node once, held or not: the engine must count it."""

    name = "wrecker"

    def initial_layout(self, gpu: SimGpu) -> Sequence[Instance]:
        return (Instance("7g.80gb", 0),)

    def attach(self, sim: Simulation) -> None:
        super().attach(sim)
        sim.set_timer(30, 1)

    def on_timer(self, token: int) -> None:
        node = self.sim.nodes[0]
        destroy = [i for g in node.gpus for i in g.instances.values()]
        self.sim.begin_apply(node, destroy, [(0, "1g.10gb", 6)], duration=10)


def test_destroying_a_held_instance_counts_a_disruption() -> None:
    sim = Simulation(scenario(), pods((0, "7g.80gb", 600), (50, "1g.10gb", 60)), Wrecker())
    run = sim.run()
    s = summarize(run)
    assert s["disrupted_pods"] == 1
    assert s["reconfigurations"] == 1
    assert s["gpu_instances"] == {"created": 1, "destroyed": 1}
    # The change ran from 30 to 40; the 1g pod arriving at 50 finds the new instance advertised.
    assert run.start_times == [0.0, 50.0]


def test_a_busy_node_takes_no_pods_until_ready() -> None:
    class Delay(Policy):
        name = "delay"

        def attach(self, sim: Simulation) -> None:
            super().attach(sim)
            sim.set_timer(0, 1)

        def on_timer(self, token: int) -> None:
            self.sim.begin_apply(self.sim.nodes[0], [], [(0, "1g.10gb", 0)], duration=20)

    sc = scenario(nodes=1, scheduler={"retry_seconds": 2})
    run = Simulation(sc, pods((5, "1g.10gb", 60)), Delay()).run()
    assert run.start_times == [22.0]  # ready at 20, retried 2 s later


@pytest.mark.parametrize(("q", "expected"), [(50, 3.0), (95, 5.0), (100, 5.0), (1, 1.0)])
def test_nearest_rank_percentile(q: float, expected: float) -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], q) == expected


def test_a_policy_that_breaks_the_hardware_rules_is_stopped() -> None:
    class Overlap(Policy):
        name = "overlap"

        def initial_layout(self, gpu: SimGpu) -> Sequence[Instance]:
            return (Instance("4g.40gb", 0),)

        def attach(self, sim: Simulation) -> None:
            super().attach(sim)
            sim.set_timer(1, 1)

        def on_timer(self, token: int) -> None:
            self.sim.begin_apply(self.sim.nodes[0], [], [(0, "1g.10gb", 2)], duration=1)

    with pytest.raises(RuntimeError, match="overlap left n-000/0 invalid"):
        Simulation(scenario(), [], Overlap()).run()


def test_offered_load_is_the_work_the_pods_bring_over_the_fleets_capacity() -> None:
    # On 2 H100s (14 slices) for an hour: a 7g pod for half the hour (7 x 1800), a 4g that cannot
    # start (all-7g offers no 4g) still brings 4 x 600, and a 1g arriving 10 minutes before the
    # end brings its whole hour (1 x 3600), although only 600 s of it fall in the run.
    specs = pods((0, "7g.80gb", 1800), (3000, "4g.40gb", 600), (3000, "1g.10gb", 3600))
    run = Simulation(scenario(), specs, StaticPolicy("all-7g")).run()
    offered = (7 * 1800 + 4 * 600 + 1 * 3600) / (14 * 3600)
    summary = summarize(run)
    assert summary["offered_load"] == round(offered, 4)
    assert summary["utilization"] == 0.25  # only the 7g ran: what runs is at most what is offered
    assert summary["utilization"] < summary["offered_load"]
