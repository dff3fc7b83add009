"""Pre-warming and draining (cdmo.planner.options.PlanOptions): what a plan adds after the pods."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cdmo.planner import PlanOptions, parse_snapshot, plan, plan_to_dict
from cdmo.planner.options import drain_limit, kept_draining, model_drain_limits, prewarm_targets

from .conftest import gpu, node, pod
from .oracle import check_plan


def planned(data: dict[str, Any], options: PlanOptions) -> Any:
    result = plan(parse_snapshot(data), options)
    assert check_plan(data, plan_to_dict(result)) == []
    return result


def layout(result: Any, node_name: str, index: int) -> list[str]:
    return [str(i) for i in result.node(node_name).gpus[index].after]


def test_prewarm_fills_free_space_only_and_counts_existing_free_instances() -> None:
    data = {"nodes": [node("n", gpu(0, "h100-80gb", "3g.40gb@4!", "1g.10gb@0"))], "pending": []}
    result = planned(data, PlanOptions(prewarm={"1g.10gb": 2, "2g.20gb": 1}))
    # Largest first: the 2g at 2 (0 would destroy the free 1g), then one more 1g at 1.
    assert sorted(layout(result, "n", 0)) == ["1g.10gb@0", "1g.10gb@1", "2g.20gb@2", "3g.40gb@4"]
    assert result.summary.destroyed == 0 and result.summary.created == 2
    assert result.assignments == ()


def test_prewarm_never_destroys_and_never_takes_room_a_pod_needs() -> None:
    # One empty H100 and a 7g pod: the pod gets the GPU, no 1g is made ready.
    data = {"nodes": [node("n", gpu(0))], "pending": [pod("big", "7g.80gb")]}
    result = planned(data, PlanOptions(prewarm={"1g.10gb": 2}))
    assert layout(result, "n", 0) == ["7g.80gb@0"]
    assert result.assignment("default/big") is not None
    # A GPU full of free 1g instances: a 2g ready would need a destroy, so none is made.
    full = [f"1g.10gb@{s}" for s in range(7)]
    data = {"nodes": [node("n", gpu(0, "h100-80gb", *full))], "pending": []}
    result = planned(data, PlanOptions(prewarm={"2g.20gb": 1}))
    assert result.summary.destroyed == 0 and result.summary.created == 0


def test_prewarm_goes_where_it_breaks_the_fewest_large_blocks() -> None:
    # A 1g ready next to a used instance, not on the empty GPU that could still take a 7g.
    data = {"nodes": [node("n", gpu(0), gpu(1, "h100-80gb", "4g.40gb@0!"))], "pending": []}
    result = planned(data, PlanOptions(prewarm={"1g.10gb": 1}))
    assert layout(result, "n", 0) == []
    assert len(layout(result, "n", 1)) == 2


def test_without_drain_a_large_pod_waits_and_nothing_is_destroyed() -> None:
    data = {
        "nodes": [
            node(
                "n",
                gpu(0, "h100-80gb", "1g.10gb@0!", "1g.10gb@1!", "1g.10gb@2!"),
                gpu(1, "h100-80gb", "1g.10gb@4!", "1g.10gb@5", "1g.10gb@6"),
            )
        ],
        "pending": [pod("big", "7g.80gb", priority=5)],
    }
    result = planned(data, PlanOptions())
    assert result.draining == () and result.summary.destroyed == 0
    assert result.unsatisfied_pod("default/big").code != "Draining"


def test_drain_picks_the_gpu_closest_to_empty_and_destroys_its_free_instances() -> None:
    data = {
        "nodes": [
            node(
                "n",
                gpu(0, "h100-80gb", "1g.10gb@0!", "1g.10gb@1!", "1g.10gb@2!"),
                gpu(1, "h100-80gb", "1g.10gb@4!", "1g.10gb@5", "1g.10gb@6"),
            )
        ],
        "pending": [pod("big", "7g.80gb", priority=5)],
    }
    result = planned(data, PlanOptions(drain_max_gpus=1))
    assert [(d.node, d.gpu, d.pod) for d in result.draining] == [("n", 1, "default/big")]
    assert layout(result, "n", 1) == ["1g.10gb@4"]
    assert result.summary.destroyed == 2
    waiting = result.unsatisfied_pod("default/big")
    assert waiting.code == "Draining" and "GPU 1 of node n" in waiting.reason


def test_drain_is_bounded_and_only_for_large_pods() -> None:
    busy = [gpu(i, "h100-80gb", "1g.10gb@0!") for i in range(3)]
    data = {"nodes": [node("n", *busy)], "pending": [pod(f"big{i}", "7g.80gb") for i in range(3)]}
    result = planned(data, PlanOptions(drain_max_gpus=2))
    assert [(d.gpu, d.pod) for d in result.draining] == [(0, "default/big0"), (1, "default/big1")]
    assert result.unsatisfied_pod("default/big2").code != "Draining"
    # Small pods that fit nowhere get no GPU drained for them.
    full = [gpu(i, "h100-80gb", *(f"1g.10gb@{s}!" for s in range(7))) for i in range(2)]
    data = {"nodes": [node("n", *full)], "pending": [pod("small", "1g.10gb"), pod("mid", "2g.20gb")]}
    assert planned(data, PlanOptions(drain_max_gpus=2)).draining == ()


def test_a_drained_gpu_is_kept_from_pods_of_the_same_and_lower_priority() -> None:
    # GPU 1 drained in the last plan for the 7g pod; a used 1g still holds it. A new 1g pod of the
    # same priority must go to GPU 0 (which has room), not into GPU 1's free units.
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb", "3g.40gb@4!"), gpu(1, "h100-80gb", "1g.10gb@6!"))],
        "pending": [pod("big", "7g.80gb"), pod("small", "1g.10gb")],
    }
    result = planned(data, PlanOptions(drain_max_gpus=1, draining=(("n", 1),)))
    assert result.assignment("default/small").devices[0].gpu == 0
    assert [(d.node, d.gpu) for d in result.draining] == [("n", 1)]
    # Without the hold, best fit would put it beside the used 1g on GPU 1.
    free = planned(data, PlanOptions())
    assert free.assignment("default/small").devices[0].gpu == 1


def test_a_drained_gpu_serves_its_pod_once_empty() -> None:
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb", "3g.40gb@4!"), gpu(1))],
        "pending": [pod("big", "7g.80gb"), pod("small", "1g.10gb")],
    }
    result = planned(data, PlanOptions(drain_max_gpus=1, draining=(("n", 1),)))
    assert result.assignment("default/big").devices[0].gpu == 1
    assert result.draining == ()


@pytest.mark.parametrize(
    ("arrivals", "now", "expected"),
    [
        ([], 100.0, {}),
        ([(0.0, "1g.10gb", 1)], 100.0, {"1g.10gb": 1}),
        ([(float(t), "1g.10gb", 1) for t in range(0, 900, 30)], 900.0, {"1g.10gb": 2}),
        ([(0.0, "7g.80gb", 1)], 1000.0, {}),
        ([(950.0, "2g.20gb", 3)], 1000.0, {"2g.20gb": 1}),
    ],
    ids=["no-demand", "one-ask", "capped", "out-of-window", "devices-count"],
)
def test_prewarm_targets(
    arrivals: list[tuple[float, str, int]], now: float, expected: dict[str, int]
) -> None:
    got = prewarm_targets(arrivals, now, window_seconds=900, horizon_seconds=60, max_per_profile=2)
    assert got == expected


def test_drain_limit() -> None:
    assert drain_limit(0.125, 64) == 8
    assert drain_limit(0.125, 3) == 1
    assert drain_limit(0, 64) == 0


def test_idle_defrag_moves_free_instances_together_and_never_a_used_one() -> None:
    # A used 1g in the upper half and a free 1g in the lower half: no room for a 4g.40gb (start 0
    # only). Re-made in the upper half, the free 1g leaves units 0-3 for a 4g.
    data = {"nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@4!", "1g.10gb@0"))], "pending": []}
    result = planned(data, PlanOptions(defrag_ops=2, defrag_profiles=("4g.40gb",)))
    after = layout(result, "n", 0)
    assert "1g.10gb@4" in after and "1g.10gb@0" not in after and len(after) == 2
    assert (result.summary.destroyed, result.summary.created) == (1, 1)
    # Then a 4g fits without destroying anything.
    again = {
        "nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@4!", *(f"{i}" for i in after if i != "1g.10gb@4")))],
        "pending": [pod("big", "4g.40gb")],
    }
    assert planned(again, PlanOptions()).summary.destroyed == 0


def test_idle_defrag_keeps_its_budget_and_waits_while_a_pod_waits() -> None:
    data = {"nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@4!", "1g.10gb@0"))], "pending": []}
    assert not planned(data, PlanOptions(defrag_ops=1)).node("n").changed  # a move costs 2
    assert not planned(data, PlanOptions()).node("n").changed  # off by default
    waiting = dict(data, pending=[pod("wait", "7g.80gb")])
    assert not planned(waiting, PlanOptions(defrag_ops=10)).node("n").changed


def test_drains_on_nodes_a_plan_did_not_see_are_kept() -> None:
    previous = (("a", 0), ("b", 1))
    # Node b was applying (not in the plan): its drain stays; node a was seen and is not drained now.
    assert kept_draining(previous, ["a", "c"], [("c", 2)]) == (("b", 1), ("c", 2))
    assert kept_draining(previous, ["a", "b"], []) == ()


def test_while_a_pod_waits_only_changed_nodes_are_prewarmed() -> None:
    # The 7g waits (a used 1g on every GPU); the 1g pod makes node a change. A ready 2g goes
    # there, never to node b, which no pod needs changed.
    data = {
        "nodes": [node("a", gpu(0, "h100-80gb", "1g.10gb@0!")), node("b", gpu(0, "h100-80gb", "1g.10gb@0!"))],
        "pending": [pod("big", "7g.80gb"), pod("small", "1g.10gb")],
    }
    result = planned(data, PlanOptions(prewarm={"2g.20gb": 1}))
    changed = [n.name for n in result.nodes if n.changed]
    assert changed == [result.assignment("default/small").node]
    assert any(i.profile == "2g.20gb" for i in result.node(changed[0]).gpus[0].after)
    # With nobody waiting, any node may get it.
    idle = dict(data, pending=[])
    assert planned(idle, PlanOptions(prewarm={"2g.20gb": 1})).summary.created == 1


def _starving_small_pod_data() -> dict[str, Any]:
    # GPU 0 is full; GPU 1 has units 3 and 5 free, where no 2g fits. A 7g pod and a 2g pod wait.
    return {
        "nodes": [
            node(
                "n",
                gpu(0, "h100-80gb", *(f"1g.10gb@{s}!" for s in range(7))),
                gpu(1, "h100-80gb", *(f"1g.10gb@{s}!" for s in (0, 1, 2, 4, 6))),
            )
        ],
        "pending": [pod("big", "7g.80gb", priority=5), pod("small", "2g.20gb")],
    }


def test_drain_yields_to_a_smaller_pod_that_waited_long_on_the_same_model() -> None:
    data = _starving_small_pod_data()
    base = PlanOptions(drain_max_gpus=1, drain_yield_after_seconds=300)
    # The small pod waited briefly: GPU 1 (fewest units held) drains for the 7g pod.
    short = planned(data, dataclasses.replace(base, waited={"default/small": 10}))
    assert [(d.gpu, d.pod) for d in short.draining] == [(1, "default/big")]
    # The 2g pod has waited 10 minutes for an H100: no H100 drains, and a drain from the last plan
    # is let go, so its freed units go to the small pods again.
    waited = {"default/big": 3000.0, "default/small": 600.0}
    long = planned(data, dataclasses.replace(base, waited=waited))
    assert long.draining == ()
    kept = planned(data, dataclasses.replace(base, waited=waited, draining=(("n", 1),)))
    assert kept.draining == ()
    # 0 turns the bound off (the old behaviour).
    off = planned(data, dataclasses.replace(base, waited=waited, drain_yield_after_seconds=0))
    assert [(d.gpu, d.pod) for d in off.draining] == [(1, "default/big")]


def test_drain_yield_looks_only_at_models_the_small_pod_can_use() -> None:
    # The small pod asks for a profile only A100-40GB GPUs offer: the H100s may still drain.
    data = _starving_small_pod_data()
    data["pending"][1] = pod("small", "1g.5gb")
    data["nodes"].append(node("m", gpu(0, "a100-40gb", *(f"1g.5gb@{s}!" for s in range(7)))))
    options = PlanOptions(
        drain_max_gpus=1,
        drain_yield_after_seconds=300,
        waited={"default/big": 3000.0, "default/small": 900.0},
    )
    result = planned(data, options)
    assert [(d.node, d.gpu) for d in result.draining] == [("n", 1)]


def test_drain_keeps_to_a_share_of_each_model() -> None:
    # Four H100s and four A100-80GBs: with a share of 1/4, at most one GPU of each model drains
    # although the overall limit would allow four.
    h100 = [gpu(i, "h100-80gb", "1g.10gb@0!") for i in range(4)]
    a100 = [gpu(i, "a100-80gb", "1g.10gb@0!") for i in range(4)]
    data = {
        "nodes": [node("a", *a100), node("h", *h100)],
        "pending": [pod(f"big{i}", "7g.80gb") for i in range(4)],
    }
    result = planned(data, PlanOptions(drain_max_gpus=4, drain_max_model_share=0.25))
    assert sorted(d.node for d in result.draining) == ["a", "h"]
    assert len(planned(data, PlanOptions(drain_max_gpus=4)).draining) == 4
    assert model_drain_limits(["h100-80gb"] * 4 + ["a100-80gb"], 0.25) == {"h100-80gb": 1, "a100-80gb": 1}


def test_reclaim_destroys_free_instances_of_nearly_empty_gpus_while_a_large_pod_waits() -> None:
    data = {
        "nodes": [
            node(
                "n",
                gpu(0, "h100-80gb", "1g.10gb@0!", "1g.10gb@1", "1g.10gb@2"),
                gpu(1, "h100-80gb", *(f"1g.10gb@{s}!" for s in range(5)), "1g.10gb@5"),
            )
        ],
        "pending": [pod("big", "7g.80gb", priority=5)],
    }
    result = planned(data, PlanOptions(reclaim_max_used_share=0.5))
    # GPU 0 (1 of 8 units used) loses its free instances; GPU 1 (5 of 8 used) keeps its one.
    assert layout(result, "n", 0) == ["1g.10gb@0"] and "1g.10gb@5" in layout(result, "n", 1)
    assert result.summary.destroyed == 2 and result.draining == ()
    # Off by default, and nothing to do when no large pod waits.
    assert planned(data, PlanOptions()).summary.destroyed == 0
    quiet = {**data, "pending": [pod("small", "1g.10gb")]}
    assert planned(quiet, PlanOptions(reclaim_max_used_share=0.5)).summary.destroyed == 0


def test_drain_goes_to_the_higher_priority_then_the_longest_waiting_pod() -> None:
    # A used 1g at start 0 on both GPUs: neither the 7g nor the 4g (start 0 only) fits.
    data = {
        "nodes": [node("n", *(gpu(i, "h100-80gb", "1g.10gb@0!") for i in range(2)))],
        "pending": [
            pod("seven", "7g.80gb", priority=10),
            pod("four", "4g.40gb", priority=0),
            pod("old", "4g.40gb", priority=0),
        ],
    }
    waited = {"default/seven": 100.0, "default/four": 3000.0, "default/old": 4000.0}
    options = PlanOptions(drain_max_gpus=1, waited=waited)
    assert [d.pod for d in planned(data, options).draining] == ["default/seven"]
    del data["pending"][0]
    assert [d.pod for d in planned(data, options).draining] == ["default/old"]


def test_reclaim_spares_a_model_whose_small_pods_waited_long() -> None:
    # The 2g pod cannot fit (GPU 0 is full, GPU 1's free 1g instances sit where no 2g goes once
    # they stay); it waited 10 minutes: the H100s keep their free instances for small pods.
    data = {
        "nodes": [
            node(
                "n",
                gpu(0, "h100-80gb", *(f"1g.10gb@{s}!" for s in range(7))),
                gpu(1, "h100-80gb", *(f"1g.10gb@{s}!" for s in (0, 2, 4, 6)), "1g.10gb@1", "1g.10gb@5"),
            )
        ],
        "pending": [pod("big", "7g.80gb", priority=5), pod("small", "2g.20gb")],
    }
    options = PlanOptions(reclaim_max_used_share=1.0, drain_yield_after_seconds=300)
    fresh = planned(data, dataclasses.replace(options, waited={"default/small": 10.0}))
    assert fresh.summary.destroyed == 2  # the free 1g instances of GPU 1 go
    starving = planned(data, dataclasses.replace(options, waited={"default/small": 600.0}))
    assert starving.summary.destroyed == 0
