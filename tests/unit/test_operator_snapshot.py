"""From index summaries to the planner's snapshot, node states, patches and Events (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cdmo.config import OperatorConfig
from cdmo.mig.layouts import Instance
from cdmo.operator.events import dedup_unsatisfied, repartition_message
from cdmo.operator.publish import adopted_layouts, build_spec_patch, desired_layouts, nodes_to_patch
from cdmo.operator.snapshot import (
    PLANNED_FOR,
    build_snapshot,
    held_pods,
    node_states,
    screen_pods,
    summarize_miglayout,
    summarize_node,
)
from cdmo.operator.stale import SPEC_PATCHED_AT, NodeState, node_state
from cdmo.planner import Device, parse_snapshot, plan

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = "2026-01-01T11:59:00Z"
CONFIG = OperatorConfig(stale_timeout_seconds=180, pending_grace_seconds=60)


def _node(name: str, product: str = "NVIDIA-H100-80GB-HBM3", **spec: Any) -> dict[str, Any]:
    return summarize_node(
        {
            "metadata": {
                "name": name,
                "labels": {"cdmo.clear.ml/gpu-partitioning": "mig", "nvidia.com/gpu.product": product},
            },
            "spec": spec,
            "status": {"allocatable": {"cpu": "8", "nvidia.com/mig-1g.10gb": "1"}},
        }
    )


def _inst(profile: str, start: int, allocated: bool = False, pod: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"profile": profile, "start": start, "allocated": allocated}
    if pod:
        out["pod"] = pod
    return out


def _ml(
    name: str,
    gpus: list[dict[str, Any]] | None,
    *,
    generation: int = 2,
    observed: int | None = 2,
    spec: list[dict[str, Any]] | str | None = "same",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if gpus is not None:
        status["gpus"] = gpus
    if observed is not None:
        status["observedGeneration"] = observed
    if spec == "same":
        spec_gpus = [
            {
                "index": g["index"],
                "instances": [{"profile": i["profile"], "start": i["start"]} for i in g["instances"]],
            }
            for g in gpus or []
        ]
    else:
        spec_gpus = spec  # type: ignore[assignment]
    return summarize_miglayout(
        {
            "metadata": {
                "name": name,
                "uid": f"uid-{name}",
                "resourceVersion": "41",
                "generation": generation,
                "creationTimestamp": T,
                "annotations": annotations or {},
            },
            "spec": {} if spec_gpus is None else {"gpus": spec_gpus},
            "status": status,
        }
    )


def _gpu(index: int, instances: list[dict[str, Any]], model: str = "h100-80gb") -> dict[str, Any]:
    return {"index": index, "model": model, "migEnabled": True, "instances": instances}


def _pending(
    name: str, requests: dict[str, int], unschedulable: bool = True, created: str = T
) -> dict[str, Any]:
    return {
        "key": f"default/{name}",
        "name": name,
        "namespace": "default",
        "uid": f"uid-{name}",
        "created": created,
        "node": "",
        "phase": "Pending",
        "unschedulable": unschedulable,
        "requests": requests,
        "priority": 0,
        "nodeSelector": {},
        "tolerations": [],
        "affinity": {},
    }


def _bound(name: str, node: str, requests: dict[str, int]) -> dict[str, Any]:
    return {**_pending(name, requests), "node": node, "unschedulable": False}


@pytest.mark.parametrize(
    ("ml", "state"),
    [
        (_ml("n", [_gpu(0, [])]), NodeState.READY),
        (
            _ml(
                "n",
                [_gpu(0, [])],
                generation=3,
                observed=2,
                annotations={SPEC_PATCHED_AT: "2026-01-01T11:59:30Z"},
            ),
            NodeState.APPLYING,
        ),
        (
            _ml(
                "n",
                [_gpu(0, [])],
                generation=3,
                observed=2,
                annotations={SPEC_PATCHED_AT: "2026-01-01T11:50:00Z"},
            ),
            NodeState.STALE,
        ),
        (_ml("n", None, generation=1, observed=None, spec=None), NodeState.WAITING_FOR_AGENT),
    ],
    ids=["observed", "applying", "stale-after-timeout", "no-report-yet"],
)
def test_node_state(ml: dict[str, Any], state: NodeState) -> None:
    assert node_state(ml, NOW, 180) is state


def test_used_means_held_or_reserved_by_a_bound_pod() -> None:
    ml = _ml(
        "n1",
        [
            _gpu(
                0,
                [
                    _inst("3g.40gb", 0, True, "default/runner"),
                    _inst("1g.10gb", 4),
                    _inst("1g.10gb", 5),
                    _inst("1g.10gb", 6),
                ],
            )
        ],
    )
    snap = build_snapshot(
        {"n1": _node("n1")},
        {"n1": ml},
        [_pending("want", {"nvidia.com/mig-2g.20gb": 1})],
        [
            _bound("runner", "n1", {"nvidia.com/mig-3g.40gb": 1}),
            _bound("admitting", "n1", {"nvidia.com/mig-1g.10gb": 1}),
        ],
        CONFIG,
        NOW,
    )
    instances = snap["nodes"][0]["gpus"][0]["instances"]
    assert [(i["profile"], i["start"], i["used"]) for i in instances] == [
        ("3g.40gb", 0, True),  # held (the agent saw the pod's UUID)
        ("1g.10gb", 4, True),  # reserved: a bound pod not yet admitted takes the first free one
        ("1g.10gb", 5, False),
        ("1g.10gb", 6, False),
    ]
    assert snap["nodes"][0]["labels"]["cdmo.clear.ml/gpu-partitioning"] == "mig"
    assert snap["pending"] == [
        {"name": "want", "namespace": "default", "requests": {"nvidia.com/mig-2g.20gb": 1}, "priority": 0}
    ]
    parse_snapshot(snap)  # the planner reads it as is


def test_bound_pods_on_shared_names_and_huge_counts_reserve_what_is_free() -> None:
    ml = _ml("n1", [_gpu(0, [_inst("1g.10gb", 4), _inst("1g.10gb", 5), _inst("2g.20gb", 0)])])
    snap = build_snapshot(
        {"n1": _node("n1")},
        {"n1": ml},
        [],
        [
            _bound("shared", "n1", {"nvidia.com/mig-1g.10gb.shared": 1}),
            _bound("huge", "n1", {"nvidia.com/mig-2g.20gb": 10**12}),
        ],
        CONFIG,
        NOW,
    )
    instances = snap["nodes"][0]["gpus"][0]["instances"]
    assert [(i["profile"], i["start"], i["used"]) for i in instances] == [
        ("2g.20gb", 0, True),  # all there is for a pod asking 10^12: no more, and no endless loop
        ("1g.10gb", 4, True),  # the shared name reserves its profile, as the agent counts it
        ("1g.10gb", 5, False),
    ]


def test_snapshot_takes_ready_nodes_and_waiting_pods_only() -> None:
    nodes = {n: _node(n) for n in ("a", "b", "c")}
    mls = {
        "a": _ml("a", [_gpu(0, [])]),
        "b": _ml("b", [_gpu(0, [])], generation=3, observed=2, annotations={PLANNED_FOR: "default/held"}),
        "c": _ml("c", None, generation=1, observed=None, spec=None),
    }
    pending = [
        _pending("held", {"nvidia.com/mig-1g.10gb": 1}),
        _pending("fresh", {"nvidia.com/mig-1g.10gb": 1}, unschedulable=False, created="2026-01-01T11:59:59Z"),
        _pending("ready", {"nvidia.com/mig-1g.10gb": 1}),
    ]
    states = node_states(nodes, mls, CONFIG, NOW)
    assert held_pods(mls, states) == {"default/held": "b"}
    snap = build_snapshot(nodes, mls, pending, [], CONFIG, NOW)
    assert [n["name"] for n in snap["nodes"]] == ["a"]
    assert [p["name"] for p in snap["pending"]] == ["ready"]


def test_gpu_model_falls_back_to_the_gfd_label() -> None:
    gpu = {"index": 0, "model": "", "product": "", "instances": []}
    snap = build_snapshot({"n": _node("n")}, {"n": _ml("n", [gpu])}, [], [], CONFIG, NOW)
    assert snap["nodes"][0]["gpus"][0]["model"] == "NVIDIA-H100-80GB-HBM3"


def test_screen_rejects_unreadable_pods_one_by_one() -> None:
    good = _pending("good", {"nvidia.com/mig-1g.10gb": 1})
    typo = _pending("typo", {"nvidia.com/mig-banana": 1})
    ok, rejected = screen_pods([good, typo])
    assert ok == [good]
    assert [(r.pod["name"], r.code) for r in rejected] == [("typo", "UnknownProfile")]
    assert "nvidia.com/mig-banana" in rejected[0].message


def test_only_changed_nodes_are_patched_with_concurrency() -> None:
    mls = {
        "a": _ml("a", [_gpu(0, [])]),
        "b": _ml("b", [_gpu(0, [_inst("7g.80gb", 0, True, "default/big")])]),
    }
    nodes = {"a": _node("a"), "b": _node("b")}
    snap = build_snapshot(nodes, mls, [_pending("p", {"nvidia.com/mig-1g.10gb": 1})], [], CONFIG, NOW)
    the_plan = plan(parse_snapshot(snap))
    patches = nodes_to_patch(the_plan, mls)
    assert list(patches) == ["a"]
    (assignment,) = the_plan.assignments
    body = build_spec_patch(patches["a"], mls["a"]["resourceVersion"], ["default/p"], NOW)
    assert body["metadata"]["resourceVersion"] == "41"
    assert body["metadata"]["annotations"] == {
        SPEC_PATCHED_AT: "2026-01-01T12:00:00Z",
        PLANNED_FOR: "default/p",
    }
    assert body["spec"]["gpus"][0]["instances"] == [
        {"profile": d.profile, "start": d.start} for d in assignment.devices
    ]


def test_desired_keeps_gpus_the_plan_leaves_out() -> None:
    current = {0: (Instance("1g.10gb", 0),), 1: (Instance("7g.80gb", 0),)}
    assert desired_layouts(current, {0: [Instance("2g.20gb", 0)]}) == {
        0: (Instance("2g.20gb", 0),),
        1: (Instance("7g.80gb", 0),),
    }


def test_adoption_takes_the_reported_layout_once() -> None:
    bare = _ml(
        "n",
        [_gpu(0, [_inst("3g.40gb", 4, True)]), {"index": 1, "migEnabled": False, "instances": []}],
        spec=None,
    )
    assert adopted_layouts(bare) == {0: (Instance("3g.40gb", 4),)}
    assert adopted_layouts(_ml("n", [_gpu(0, [])])) is None  # has a spec already
    assert adopted_layouts(_ml("n", None, spec=None)) is None  # nothing reported yet


def test_repartition_message_names_node_gpu_and_new_instances() -> None:
    devices = [Device(0, "1g.10gb", 3, True), Device(0, "1g.10gb", 4, False), Device(1, "2g.20gb", 0, True)]
    assert repartition_message("gpu-node-1", devices) == (
        "Repartitioning gpu-node-1 GPU 0: creating 1g.10gb@3; GPU 1: creating 2g.20gb@0 for this pod"
    )
    assert repartition_message("gpu-node-1", [Device(0, "1g.10gb", 4, False)]) is None


def test_unsatisfied_events_only_when_the_reason_changes() -> None:
    pod = _pending("p", {})
    events, memory = dedup_unsatisfied({}, [(pod, "NoRoom", "full")])
    assert [(e.type, e.reason, e.message) for e in events] == [("Warning", "NoRoom", "full")]
    again, memory = dedup_unsatisfied(memory, [(pod, "NoRoom", "full")])
    assert again == []
    changed, memory = dedup_unsatisfied(memory, [(pod, "NoFittingGpu", "too big")])
    assert [e.reason for e in changed] == ["NoFittingGpu"]
    _, memory = dedup_unsatisfied(memory, [])
    assert memory == {}  # served or gone: forgotten


def test_stale_clock_starts_at_the_last_spec_write() -> None:
    recent = (NOW - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ml = _ml("n", [_gpu(0, [])], generation=5, observed=4, annotations={SPEC_PATCHED_AT: recent})
    assert node_state(ml, NOW, 180) is NodeState.APPLYING
    assert node_state(ml, NOW + timedelta(seconds=171), 180) is NodeState.STALE


def test_a_node_the_planner_cannot_read_is_left_out_not_fatal() -> None:
    odd = _node("odd")
    odd["taints"] = [{"key": "x", "effect": "SomeFutureEffect"}]
    nodes = {"good": _node("good"), "odd": odd}
    mls = {"good": _ml("good", [_gpu(0, [])]), "odd": _ml("odd", [_gpu(0, [])])}
    snap = build_snapshot(nodes, mls, [_pending("p", {"nvidia.com/mig-1g.10gb": 1})], [], CONFIG, NOW)
    assert [n["name"] for n in snap["nodes"]] == ["good"]


def test_a_gpu_whose_mig_mode_waits_for_a_reset_to_go_off_is_not_planned() -> None:
    """``migEnabled: true, migPending: false``: MIG switched off, pending a reset (Ampere). The
    agent creates nothing there (MigDisablePending: the reset would take it from the pod). Planned
    anyway, the pod's plan equalled the spec already written, so no patch went out, and the pod
    waited for ever while another GPU had room. GPUs with MIG off were already left out."""
    going_off = {**_gpu(0, []), "migPending": False}
    waiting_on = {**_gpu(1, []), "migEnabled": False, "migPending": True}  # MIG on after a reset
    mls = {"n": _ml("n", [going_off, waiting_on, _gpu(2, [])])}
    snap = build_snapshot(
        {"n": _node("n")}, mls, [_pending("p", {"nvidia.com/mig-7g.80gb": 1})], [], CONFIG, NOW
    )
    assert [g["index"] for g in snap["nodes"][0]["gpus"]] == [2]
    result = plan(parse_snapshot(snap))
    assert [(a.node, a.devices[0].gpu) for a in result.assignments] == [("n", 2)]


def test_what_the_device_plugin_withholds_is_planned_around() -> None:
    """``healthy: false`` from the agent: its device plugin withholds the GPU or the instance
    (a critical XID error), so the kubelet hands it to no pod. Planned as free, a pod waited on
    it for ever. A withheld GPU is left out; a withheld free instance too, so its space is free
    to the planner and the spec without it has the agent make a new, healthy device; a withheld
    instance in use (or reserved by a bound pod) stays, as used, and nothing destroys it."""
    broken_gpu = {**_gpu(0, [_inst("7g.80gb", 0)]), "healthy": False}
    gpu1 = _gpu(
        1,
        [
            {**_inst("3g.40gb", 0), "healthy": False},  # free, withheld
            {**_inst("3g.40gb", 4, True, "default/runner"), "healthy": False},  # held, withheld
        ],
    )
    snap = build_snapshot(
        {"n": _node("n")},
        {"n": _ml("n", [broken_gpu, gpu1])},
        [_pending("p", {"nvidia.com/mig-3g.40gb": 1})],
        [_bound("runner", "n", {"nvidia.com/mig-3g.40gb": 1})],
        CONFIG,
        NOW,
    )
    [gpu] = snap["nodes"][0]["gpus"]
    assert gpu["index"] == 1
    assert [(i["profile"], i["start"], i["used"]) for i in gpu["instances"]] == [("3g.40gb", 4, True)]
    result = plan(parse_snapshot(snap))
    # the pod gets a new instance where the withheld free one was, not the withheld one itself
    [assignment] = result.assignments
    [device] = assignment.devices
    assert (device.gpu, device.start, device.new) == (1, 0, True)
