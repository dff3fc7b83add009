"""Hypothesis properties of every plan (contract rules 1-5 of spec/planner-io.md)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdmo.mig.catalog import find_model, get_model
from cdmo.mig.layouts import Instance, enumerate_layouts, validate_layout
from cdmo.planner import parse_snapshot, plan, plan_to_dict

from .oracle import check_plan

MODELS = (
    "h100-80gb",
    "a100-40gb",
    "a30-24gb",
    "rtx-pro-6000-blackwell",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA Tesla T4",
)
TAINTS = (
    {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "batch", "effect": "NoExecute"},
    {"key": "spot", "effect": "PreferNoSchedule"},
)
TOLERATIONS = (
    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Exists"},
    {"operator": "Exists"},
    {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoExecute"},
)
REQUIREMENTS = (
    {"key": "zone", "operator": "In", "values": ["a"]},
    {"key": "zone", "operator": "NotIn", "values": ["a"]},
    {"key": "rack", "operator": "Exists"},
    {"key": "rack", "operator": "DoesNotExist"},
    {"key": "rack", "operator": "Gt", "values": ["3"]},
    {"key": "rack", "operator": "Lt", "values": ["3"]},
)
ALL_PROFILES = sorted(
    {
        p
        for m in ("h100-80gb", "a100-40gb", "a30-24gb", "rtx-pro-6000-blackwell")
        for p in get_model(m).profile_names
    }
)


@st.composite
def gpus(draw: st.DrawFn, index: int) -> dict[str, Any]:
    model = draw(st.sampled_from(MODELS))
    instances: list[dict[str, Any]] = []
    if model != "NVIDIA Tesla T4" and draw(st.booleans()):
        layouts = enumerate_layouts(get_model(model))
        layout = layouts[draw(st.integers(0, len(layouts) - 1))]
        instances = [{"profile": i.profile, "start": i.start, "used": draw(st.booleans())} for i in layout]
    elif model == "NVIDIA Tesla T4":
        instances = [{"profile": "1g.5gb", "start": 0, "used": draw(st.booleans())}]
    return {"index": index, "model": model, "instances": instances}


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    nodes = []
    for n in range(draw(st.integers(0, 4))):
        labels = {"zone": draw(st.sampled_from("ab"))}
        if draw(st.integers(0, 5)):
            labels["cdmo.clear.ml/gpu-partitioning"] = "mig"
        if draw(st.booleans()):
            labels["rack"] = str(draw(st.integers(0, 6)))
        node: dict[str, Any] = {
            "name": f"gpu-{n}",
            "labels": labels,
            "taints": draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique_by=lambda t: t["key"])),
            "unschedulable": draw(st.integers(0, 7)) == 0,
            "gpus": [draw(gpus(g)) for g in range(draw(st.integers(0, 3)))],
        }
        nodes.append(node)
    pending = []
    for p in range(draw(st.integers(0, 9))):
        profiles = draw(st.lists(st.sampled_from(ALL_PROFILES), min_size=0, max_size=3))
        requests: dict[str, int] = {}
        for prof in profiles:
            key = "nvidia.com/mig-" + prof.replace("+", ".")
            requests[key] = requests.get(key, 0) + 1
        pod: dict[str, Any] = {
            "name": f"pod-{p}",
            "namespace": draw(st.sampled_from(["default", "ml"])),
            "requests": requests,
            "priority": draw(st.sampled_from([0, 0, 1, 7, -2])),
            "tolerations": draw(st.lists(st.sampled_from(TOLERATIONS), max_size=2)),
        }
        if draw(st.integers(0, 3)) == 0:
            pod["nodeSelector"] = {"zone": draw(st.sampled_from("ab"))}
        if draw(st.integers(0, 3)) == 0:
            terms = draw(
                st.lists(
                    st.lists(st.sampled_from(REQUIREMENTS), min_size=1, max_size=2), min_size=1, max_size=2
                )
            )
            pod["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]
                    }
                }
            }
        pending.append(pod)
    return {"nodes": nodes, "pending": pending}


PROPERTY_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(snapshots())
def test_every_plan_keeps_the_contract(data: dict[str, Any]) -> None:
    """Valid layouts, used instances kept at their start, each pod exactly once, filters honoured."""
    result = plan(parse_snapshot(data, allow_unknown_models=True))
    src = {n["name"]: {g["index"]: g for g in n["gpus"]} for n in data["nodes"]}
    for node in result.nodes:
        for g in node.gpus:
            model = find_model(g.model)
            if model is not None:
                assert validate_layout(model, g.after) == [], (node.name, g.index)
            used = {
                Instance(i["profile"], i["start"]) for i in src[node.name][g.index]["instances"] if i["used"]
            }
            assert used <= set(g.after), (node.name, g.index)
    keys = [a.pod for a in result.assignments] + [u.pod for u in result.unsatisfied]
    assert sorted(keys) == sorted(f"{p['namespace']}/{p['name']}" for p in data["pending"])
    # Everything else of the contract, checked independently of the planner's own code.
    assert check_plan(data, plan_to_dict(result)) == []


@PROPERTY_SETTINGS
@given(snapshots(), st.randoms(use_true_random=False))
def test_same_snapshot_same_plan(data: dict[str, Any], rng: Any) -> None:
    first = plan(parse_snapshot(data, allow_unknown_models=True))
    assert plan(parse_snapshot(data, allow_unknown_models=True)) == first
    shuffled = {"nodes": list(data["nodes"]), "pending": list(data["pending"])}
    rng.shuffle(shuffled["nodes"])
    rng.shuffle(shuffled["pending"])
    assert plan(parse_snapshot(shuffled, allow_unknown_models=True)) == first
