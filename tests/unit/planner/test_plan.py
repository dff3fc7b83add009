"""What the planner decides, on small clusters whose best plan is known."""

from __future__ import annotations

import random
from typing import Any

from cdmo.api import build_spec
from cdmo.mig.layouts import Instance
from cdmo.planner import (
    Device,
    Gpu,
    GpuInstance,
    Node,
    PendingPod,
    Snapshot,
    parse_snapshot,
    plan,
    plan_to_dict,
)

from .conftest import gpu, load_fixture, node, pod
from .oracle import check_plan


def _plan(data: dict[str, Any], **kw: Any) -> tuple[Any, dict[str, Any]]:
    result = plan(parse_snapshot(data, **kw))
    out = plan_to_dict(result)
    assert check_plan(data, out) == []
    return result, out


def _devices(result: Any, pod_key: str) -> list[tuple[int, str, int, bool]]:
    a = result.assignment(pod_key)
    assert a is not None, f"{pod_key} was not served"
    return [(d.gpu, d.profile, d.start, d.new) for d in a.devices]


def test_contract_example() -> None:
    result, out = _plan(load_fixture("contract-example.yaml"))
    assert _devices(result, "default/train-1") == [(0, "1g.10gb", 0, False), (0, "1g.10gb", 1, True)]
    assert out["nodes"] == [
        {
            "name": "gpu-node-1",
            "changed": True,
            "gpus": [
                {
                    "index": 0,
                    "model": "h100-80gb",
                    "instances": [
                        {"profile": "1g.10gb", "start": 0},
                        {"profile": "1g.10gb", "start": 1},
                        {"profile": "3g.40gb", "start": 4},
                    ],
                }
            ],
        }
    ]
    assert [(u["pod"], u["code"]) for u in out["unsatisfied"]] == [("default/other", "NoRoom")]


def test_free_instances_are_handed_out_before_new_ones_are_made() -> None:
    result, _ = _plan(load_fixture("handout.yaml"))
    assert _devices(result, "research/notebook") == [(0, "1g.10gb", 1, False)]
    assert _devices(result, "research/finetune") == [(0, "2g.20gb", 2, False)]
    s = result.summary
    assert (s.destroyed, s.handed_out) == (0, 2)
    assert not result.node("gpu-1").gpus[0].changed


def test_a_multi_device_pod_spans_the_gpus_of_one_node() -> None:
    result, _ = _plan(load_fixture("handout.yaml"))
    assert _devices(result, "research/pair") == [(1, "3g.40gb", 4, True), (2, "3g.40gb", 4, True)]


def test_a_multi_device_pod_never_spans_nodes() -> None:
    data = {
        "nodes": [
            node("n1", gpu(0, "h100-80gb", "4g.40gb@0!")),
            node("n2", gpu(0, "h100-80gb", "4g.40gb@0!")),
        ],
        "pending": [pod("pair", "3g.40gb", "3g.40gb")],
    }
    result, _ = _plan(data)
    (u,) = result.unsatisfied
    assert u.code == "NoRoom" and "2 x 3g.40gb" in u.reason


def test_free_instances_are_destroyed_only_when_nothing_else_fits() -> None:
    sevens = [f"1g.10gb@{s}" for s in range(7)]
    data = {"nodes": [node("n", gpu(0, "h100-80gb", *sevens))], "pending": [pod("big", "7g.80gb")]}
    result, _ = _plan(data)
    assert _devices(result, "default/big") == [(0, "7g.80gb", 0, True)]
    assert len(result.node("n").gpus[0].destroyed) == 7
    data["nodes"][0]["gpus"].append(gpu(1))
    result, _ = _plan(data)
    assert _devices(result, "default/big") == [(1, "7g.80gb", 0, True)]
    assert result.summary.destroyed == 0


def test_used_instances_stay_where_they_are() -> None:
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@3!", "1g.10gb@0"))],
        "pending": [pod("a", "3g.40gb"), pod("b", "4g.40gb")],
    }
    result, _ = _plan(data)
    after = result.node("n").gpus[0].after
    assert Instance("1g.10gb", 3) in after
    assert _devices(result, "default/a") == [(0, "3g.40gb", 4, True)]
    assert result.unsatisfied_pod("default/b") is not None  # 4g.40gb would need unit 3


def test_new_instances_are_packed_onto_few_gpus_and_nodes() -> None:
    data = {
        "nodes": [node("n1", gpu(0), gpu(1)), node("n2", gpu(0), gpu(1))],
        "pending": [pod(f"p{i}", "1g.10gb") for i in range(3)],
    }
    result, _ = _plan(data)
    assert {a.node for a in result.assignments} == {"n1"}
    assert {d.gpu for a in result.assignments for d in a.devices} == {0}
    assert (result.summary.gpus_touched, result.summary.nodes_touched) == (1, 1)


def test_serving_more_pods_beats_destroying_fewer() -> None:
    # The cheapest place for the 1g.10gb pod is the empty GPU; that would leave no room for the 7g.
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb", "3g.40gb@0", "3g.40gb@4!"), gpu(1))],
        "pending": [pod("small", "1g.10gb"), pod("whole", "7g.80gb")],
    }
    result, _ = _plan(data)
    assert _devices(result, "default/whole") == [(1, "7g.80gb", 0, True)]
    assert result.assignment("default/small") is not None


def test_priority_first_whatever_the_order() -> None:
    data = load_fixture("priority.yaml")
    result, _ = _plan(data)
    assert result.assignment("prod/urgent") is not None
    assert result.unsatisfied_pod("batch/routine").code == "Outranked"  # type: ignore[union-attr]
    data["pending"].reverse()
    assert plan(parse_snapshot(data)) == result


def test_higher_priority_is_never_left_for_lower_priority() -> None:
    # Lower-priority pods are many and small; the one high-priority pod needs the whole GPU.
    data = {
        "nodes": [node("n", gpu(0))],
        "pending": [pod(f"small-{i}", "1g.10gb") for i in range(7)] + [pod("whole", "7g.80gb", priority=5)],
    }
    result, _ = _plan(data)
    assert [a.pod for a in result.assignments] == ["default/whole"]
    assert {u.code for u in result.unsatisfied} == {"Outranked"}


def test_lower_priority_pods_fill_what_is_left() -> None:
    data = {
        "nodes": [node("n", gpu(0))],
        "pending": [
            pod("top", "4g.40gb", priority=9),
            pod("low", "3g.40gb"),
            pod("lower", "1g.10gb", priority=-1),
        ],
    }
    result, _ = _plan(data)
    assert [a.pod for a in result.assignments] == ["default/low", "default/top"]
    assert result.unsatisfied_pod("default/lower").code == "Outranked"  # type: ignore[union-attr]


def test_unlabelled_nodes_are_left_alone_and_not_listed() -> None:
    data = {"nodes": [node("plain", gpu(0), labelled=False)], "pending": [pod("p", "1g.10gb")]}
    result, out = _plan(data)
    assert out["nodes"] == []
    assert result.unsatisfied[0].code == "NoLabelledNode"


def test_cordoned_labelled_node_is_listed_unchanged() -> None:
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@0"), unschedulable=True)],
        "pending": [pod("p", "1g.10gb")],
    }
    result, out = _plan(data)
    assert out["nodes"][0]["changed"] is False
    assert result.unsatisfied[0].code == "NodeCordoned"


def test_gpu_of_unknown_model_is_left_exactly_as_it_is() -> None:
    data = {
        "nodes": [node("n", gpu(0, "NVIDIA Tesla T4", "1g.5gb@0"), gpu(1, "h100-80gb", "7g.80gb@0!"))],
        "pending": [pod("p", "1g.10gb")],
    }
    result, out = _plan(data, allow_unknown_models=True)
    g0 = result.node("n").gpus[0]
    assert (g0.model_key, g0.after, g0.changed) == (None, (Instance("1g.5gb", 0),), False)
    assert out["nodes"][0]["gpus"][0] == {
        "index": 0,
        "model": "NVIDIA Tesla T4",
        "instances": [{"profile": "1g.5gb", "start": 0}],
    }
    assert result.unsatisfied[0].code == "NoRoom"


def test_a_layout_the_model_cannot_hold_is_left_as_it_is() -> None:
    # Only a snapshot built in code can carry one (parse_snapshot refuses it).
    bad = Gpu(0, "h100-80gb", (GpuInstance("4g.40gb", 0, False), GpuInstance("3g.40gb", 0, False)))
    snap = Snapshot(
        nodes=(Node("n", {"cdmo.clear.ml/gpu-partitioning": "mig"}, gpus=(bad,)),),
        pending=(PendingPod("p", requests={"nvidia.com/mig-1g.10gb": 1}),),
    )
    result = plan(snap)
    assert not result.node("n").changed and result.assignments == ()


def test_desired_layouts_feed_build_spec() -> None:
    result, _ = _plan(load_fixture("handout.yaml"))
    spec = build_spec(result.node("gpu-1").layouts)
    assert [g["index"] for g in spec["gpus"]] == [0, 1, 2]
    assert {"profile": "3g.40gb", "start": 4} in spec["gpus"][2]["instances"]


def test_device_says_whether_it_is_new() -> None:
    result, _ = _plan(load_fixture("contract-example.yaml"))
    assert result.assignment("default/train-1").devices == (  # type: ignore[union-attr]
        Device(0, "1g.10gb", 0, False),
        Device(0, "1g.10gb", 1, True),
    )


def test_same_snapshot_in_any_order_gives_the_same_plan() -> None:
    data = load_fixture("reasons.yaml")
    first = plan(parse_snapshot(data))
    rng = random.Random(3)
    for _ in range(5):
        shuffled = {"nodes": list(data["nodes"]), "pending": list(data["pending"])}
        rng.shuffle(shuffled["nodes"])
        rng.shuffle(shuffled["pending"])
        assert plan(parse_snapshot(shuffled)) == first
