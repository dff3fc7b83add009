"""Reading snapshots: the contract's fields, and one clear message with the field's path for each fault."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cdmo.errors import InvalidInput, InvalidSnapshot
from cdmo.planner import (
    GpuInstance,
    NodeSelectorRequirement,
    Taint,
    Toleration,
    parse_snapshot,
    snapshot_to_dict,
)

from .conftest import SNAPSHOTS, gpu, load_fixture, node, pod


def test_contract_example_reads_every_field() -> None:
    snap = parse_snapshot(load_fixture("contract-example.yaml"))
    (n,) = snap.nodes
    assert n.name == "gpu-node-1" and n.labelled and not n.unschedulable
    assert n.labels == {"cdmo.clear.ml/gpu-partitioning": "mig", "zone": "a"}
    assert n.taints == (Taint("dedicated", "NoSchedule", "ml"),)
    assert n.gpus[0].instances == (GpuInstance("1g.10gb", 0, False), GpuInstance("3g.40gb", 4, True))
    train, other = snap.pending
    assert (train.key, train.priority, dict(train.requests)) == (
        "default/train-1",
        0,
        {"nvidia.com/mig-1g.10gb": 2},
    )
    assert train.tolerations == (Toleration("dedicated", "Equal", "ml", "NoSchedule"),)
    assert other.key == "default/other" and other.tolerations == (Toleration("dedicated", "Exists"),)


@pytest.mark.parametrize("name", sorted(p.name for p in SNAPSHOTS.glob("*.yaml")))
def test_snapshot_round_trips(name: str) -> None:
    snap = parse_snapshot(load_fixture(name))
    assert parse_snapshot(snapshot_to_dict(snap)) == snap


def test_affinity_is_read_into_terms() -> None:
    data = {
        "nodes": [],
        "pending": [
            pod(
                "p",
                "1g.10gb",
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "rack", "operator": "Gt", "values": [4]}]},
                                {
                                    "matchFields": [
                                        {"key": "metadata.name", "operator": "In", "values": ["n1"]}
                                    ]
                                },
                            ]
                        },
                        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}],
                    },
                    "podAntiAffinity": {"whatever": True},
                },
            )
        ],
    }
    (p,) = parse_snapshot(data).pending
    assert p.node_affinity is not None
    first, second = p.node_affinity
    assert first.match_expressions == (NodeSelectorRequirement("rack", "Gt", ("4",)),)
    assert second.match_fields == (NodeSelectorRequirement("metadata.name", "In", ("n1",)),)


def test_defaults_and_non_mig_requests() -> None:
    data = {
        "nodes": [node("n", gpu(0))],
        "pending": [{"name": "p", "requests": {"cpu": "2", "nvidia.com/mig-1g.10gb": "1"}}],
    }
    (p,) = parse_snapshot(data).pending
    assert (p.namespace, p.priority, dict(p.requests), p.node_affinity) == (
        "default",
        0,
        {"nvidia.com/mig-1g.10gb": 1},
        None,
    )


def test_label_values_written_as_numbers_become_strings() -> None:
    data = {"nodes": [node("n", labels={"rack": 7, "gpu": True})], "pending": []}
    labels = parse_snapshot(data).nodes[0].labels
    assert labels["rack"] == "7" and labels["gpu"] == "true"


def test_product_names_and_catalog_keys_both_work() -> None:
    data = {"nodes": [node("n", gpu(0, "NVIDIA H100 80GB HBM3", "3g.40gb@4!"), gpu(1, "a100-40gb"))]}
    gpus = parse_snapshot(data).nodes[0].gpus
    assert [g.model for g in gpus] == ["NVIDIA H100 80GB HBM3", "a100-40gb"]


def test_unknown_model_on_an_unlabelled_node_is_accepted() -> None:
    data = {"nodes": [node("n", gpu(0, "tesla-t4"), labelled=False)]}
    assert parse_snapshot(data).nodes[0].gpus[0].model == "tesla-t4"


def test_unknown_model_on_a_labelled_node_is_accepted_when_asked() -> None:
    data = {"nodes": [node("n", gpu(0, "tesla-t4", "1g.5gb@0!"))]}
    snap = parse_snapshot(data, allow_unknown_models=True)
    assert snap.nodes[0].gpus[0].instances == (GpuInstance("1g.5gb", 0, True),)


def _base() -> dict[str, Any]:
    return {
        "nodes": [
            node("n0", gpu(0, "h100-80gb", "3g.40gb@4!")),
            node("n1", gpu(0, "h100-80gb", "1g.10gb@0", "3g.40gb@4!"), gpu(1, "a100-40gb")),
        ],
        "pending": [
            pod("p0", "1g.10gb"),
            pod("p1", "3g.40gb", tolerations=[{"key": "a", "operator": "Exists"}]),
        ],
    }


def _set(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_base())
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()

MALFORMED = [
    ("missing nodes", ["nodes"], _DELETE, "nodes", "missing field"),
    ("missing node name", ["nodes", 1, "name"], _DELETE, "nodes[1].name", "missing field"),
    (
        "missing gpu index",
        ["nodes", 1, "gpus", 0, "index"],
        _DELETE,
        "nodes[1].gpus[0].index",
        "missing field",
    ),
    ("missing model", ["nodes", 1, "gpus", 1, "model"], _DELETE, "nodes[1].gpus[1].model", "missing field"),
    (
        "missing used",
        ["nodes", 1, "gpus", 0, "instances", 0, "used"],
        _DELETE,
        "nodes[1].gpus[0].instances[0].used",
        "missing field",
    ),
    (
        "missing start",
        ["nodes", 1, "gpus", 0, "instances", 1, "start"],
        _DELETE,
        "nodes[1].gpus[0].instances[1].start",
        "missing field",
    ),
    ("missing requests", ["pending", 1, "requests"], _DELETE, "pending[1].requests", "missing field"),
    (
        "bad start",
        ["nodes", 1, "gpus", 0, "instances", 0, "start"],
        7,
        "nodes[1].gpus[0].instances[0].start",
        "legal starts are 0, 1, 2, 3, 4, 5, 6",
    ),
    (
        "negative start",
        ["nodes", 1, "gpus", 0, "instances", 0, "start"],
        -1,
        "nodes[1].gpus[0].instances[0].start",
        "whole number >= 0",
    ),
    (
        "start not a number",
        ["nodes", 1, "gpus", 0, "instances", 0, "start"],
        "zero",
        "nodes[1].gpus[0].instances[0].start",
        "whole number",
    ),
    (
        "unknown model",
        ["nodes", 1, "gpus", 1, "model"],
        "tesla-t4",
        "nodes[1].gpus[1].model",
        "known models are a30-24gb",
    ),
    ("empty model", ["nodes", 1, "gpus", 1, "model"], "", "nodes[1].gpus[1].model", "must not be empty"),
    (
        "not a profile",
        ["nodes", 1, "gpus", 0, "instances", 0, "profile"],
        "big",
        "nodes[1].gpus[0].instances[0].profile",
        "not a MIG profile name",
    ),
    (
        "profile of another model",
        ["nodes", 1, "gpus", 0, "instances", 0, "profile"],
        "1g.5gb",
        "nodes[1].gpus[0].instances[0].profile",
        "not a MIG profile of h100-80gb",
    ),
    (
        "overlap",
        ["nodes", 1, "gpus", 0, "instances", 0],
        {"profile": "7g.80gb", "start": 0, "used": False},
        "nodes[1].gpus[0].instances",
        "overlaps",
    ),
    (
        "used not boolean",
        ["nodes", 1, "gpus", 0, "instances", 0, "used"],
        "yes",
        "nodes[1].gpus[0].instances[0].used",
        "true or false",
    ),
    (
        "request not a profile",
        ["pending", 0, "requests"],
        {"nvidia.com/mig-big": 1},
        'pending[0].requests["nvidia.com/mig-big"]',
        "not a MIG profile",
    ),
    (
        "request count",
        ["pending", 0, "requests"],
        {"nvidia.com/mig-1g.10gb": -1},
        'pending[0].requests["nvidia.com/mig-1g.10gb"]',
        "whole number >= 0",
    ),
    ("priority", ["pending", 0, "priority"], "high", "pending[0].priority", "whole number"),
    (
        "taint effect",
        ["nodes", 0, "taints"],
        [{"key": "a", "effect": "Never"}],
        "nodes[0].taints[0].effect",
        "not a taint effect",
    ),
    (
        "toleration operator",
        ["pending", 1, "tolerations", 0, "operator"],
        "Matches",
        "pending[1].tolerations[0].operator",
        "Equal or Exists",
    ),
    (
        "toleration empty key",
        ["pending", 1, "tolerations", 0],
        {"operator": "Equal", "value": "x"},
        "pending[1].tolerations[0].operator",
        "must be Exists when key is empty",
    ),
    ("labels not a map", ["nodes", 0, "labels"], ["a"], "nodes[0].labels", "must be an object"),
    ("nodes not a list", ["nodes"], {"n": 1}, "nodes", "must be a list"),
    ("unschedulable", ["nodes", 0, "unschedulable"], "no", "nodes[0].unschedulable", "true or false"),
    ("duplicate node", ["nodes", 1, "name"], "n0", "nodes[1].name", "appears twice"),
    ("duplicate gpu", ["nodes", 1, "gpus", 1, "index"], 0, "nodes[1].gpus[1].index", "appears twice"),
    ("duplicate pod", ["pending", 1, "name"], "p0", "pending[1].name", "appears twice"),
]


@pytest.mark.parametrize(
    ("path", "value", "where", "says"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_snapshot_names_the_field(path: list[Any], value: Any, where: str, says: str) -> None:
    with pytest.raises(InvalidSnapshot) as info:
        parse_snapshot(_set(path, value))
    assert info.value.path == where
    assert str(info.value).startswith(where + ": ")
    assert says in str(info.value)
    assert isinstance(info.value, InvalidInput)  # the CLI maps it to exit 2


AFFINITY_FAULTS = [
    ({"key": "rack", "operator": "Near", "values": ["1"]}, "operator", "not a node selector operator"),
    ({"key": "rack", "operator": "In", "values": []}, "values", "needs at least one value"),
    ({"key": "rack", "operator": "Exists", "values": ["1"]}, "values", "takes no values"),
    ({"key": "rack", "operator": "Gt", "values": ["four"]}, "values", "exactly one whole number"),
    ({"key": "rack", "operator": "Lt", "values": ["1", "2"]}, "values", "exactly one whole number"),
]


@pytest.mark.parametrize(("req", "field", "says"), AFFINITY_FAULTS, ids=[f[2] for f in AFFINITY_FAULTS])
def test_malformed_affinity_names_the_field(req: dict[str, Any], field: str, says: str) -> None:
    base = (
        "pending[0].affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
    )
    data = {
        "nodes": [],
        "pending": [
            pod(
                "p",
                "1g.10gb",
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [req]}]
                        }
                    }
                },
            )
        ],
    }
    with pytest.raises(InvalidSnapshot) as info:
        parse_snapshot(data)
    assert info.value.path == f"{base}.matchExpressions[0].{field}"
    assert says in str(info.value)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(InvalidSnapshot, match="an object with nodes and pending"):
        parse_snapshot(["nodes"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("start", True, "must be a whole number"),
        ("used", 1, "must be true or false"),
        ("start", 1.0, "whole"),
    ],
    ids=["start true", "used 1", "start 1.0"],
)
def test_a_layout_checked_once_is_still_refused_with_values_of_the_wrong_type(
    field: str, value: Any, says: str
) -> None:
    # parse.py keeps layouts that passed; 1 == True == 1.0 in Python, so the cache must not let a
    # wrongly typed value ride on a layout checked before.
    good = {"nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@1!"))]}
    assert parse_snapshot(good) == parse_snapshot(copy.deepcopy(good))
    bad = copy.deepcopy(good)
    bad["nodes"][0]["gpus"][0]["instances"][0][field] = value
    with pytest.raises(InvalidSnapshot) as info:
        parse_snapshot(bad)
    assert info.value.path == f"nodes[0].gpus[0].instances[0].{field}"
    assert says in str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in SNAPSHOTS.glob("*.yaml")))
def test_parse_gives_the_same_snapshot_with_and_without_checked_layouts(name: str) -> None:
    from cdmo.planner import parse

    data = load_fixture(name)
    parse._LAYOUTS.clear()
    cold = parse_snapshot(data)
    assert parse._LAYOUTS  # the fixture's layouts were kept ...
    assert parse_snapshot(data) == cold  # ... and give the same GPUs
    extra = copy.deepcopy(data)
    for n in extra["nodes"]:
        for g in n.get("gpus") or []:
            for inst in g.get("instances") or []:
                inst["note"] = "extra fields are ignored"
    assert parse_snapshot(extra) == cold


WELL_TYPED_PODS: list[dict[str, Any]] = [
    pod("plain", "1g.10gb"),
    pod("two", "1g.10gb", "1g.10gb", "3g.40gb", namespace="ml", priority=-5),
    pod("sel", "2g.20gb", nodeSelector={"zone": "a", "b": "c"}),
    pod("tol", "7g.80gb", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml"}]),
    pod("every", "7g.80gb", tolerations=[{"operator": "Exists"}], note="extra fields are ignored"),
    pod(
        "aff",
        "1g.10gb",
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]
                }
            }
        },
    ),
    {"name": "cpu", "requests": {"cpu": "2", "nvidia.com/mig-1g.10gb": 0}},
]
#: Pods only the full check reads (values it converts), each with what it makes of them.
CONVERTED_PODS: list[dict[str, Any]] = [
    {"name": "count-string", "requests": {"nvidia.com/mig-1g.10gb": "2"}},
    {"name": "label-number", "requests": {}, "nodeSelector": {"rack": 7}},
    {"name": "toleration-tuple", "requests": {}, "tolerations": ({"operator": "Exists"},)},
    {"name": "toleration-number", "requests": {}, "tolerations": [{"key": "k", "value": 3}]},
]


@pytest.mark.parametrize("raw", WELL_TYPED_PODS + CONVERTED_PODS, ids=lambda r: r["name"])
def test_the_fast_path_reads_a_pod_as_the_full_check_does(raw: dict[str, Any]) -> None:
    from cdmo.planner import parse

    full = parse._parse_pod(copy.deepcopy(raw), "pending[0]")
    fast = parse._pod_fast(copy.deepcopy(raw), 0)
    if raw in WELL_TYPED_PODS:
        assert fast is not None, "a plainly typed pod should not need the full check"
    assert fast is None or fast == full
    assert parse_snapshot({"nodes": [], "pending": [raw]}).pending == (full,)


def test_pods_alike_share_their_parts_on_both_paths() -> None:
    """Equal asks are one object each, whether a pod took the fast path or the full check."""
    tol = [{"key": "k", "value": "3"}]
    fast = {
        "name": "a",
        "requests": {"nvidia.com/mig-1g.10gb": 1},
        "nodeSelector": {"z": "1"},
        "tolerations": tol,
    }
    # The same asks written so that only the full check reads them (a count and a label as numbers).
    full = {
        "name": "b",
        "requests": {"nvidia.com/mig-1g.10gb": "1"},
        "nodeSelector": {"z": 1},
        "tolerations": tol,
    }
    a, b = parse_snapshot({"nodes": [], "pending": [fast, copy.deepcopy(full)]}).pending
    c = parse_snapshot({"nodes": [], "pending": [copy.deepcopy(full)]}).pending[0]
    for x, y in ((a, b), (a, c)):
        assert x.requests is y.requests
        assert x.node_selector is y.node_selector
        assert x.tolerations is y.tolerations


@pytest.mark.parametrize(
    ("raw", "where", "says"),
    [
        (
            {"name": "p", "requests": {}, "tolerations": [{"operator": "Bogus"}]},
            "tolerations[0].operator",
            "Bogus",
        ),
        (
            {"name": "p", "requests": {}, "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            "tolerations[0].value",
            "empty",
        ),
        (
            {"name": "p", "requests": {"nvidia.com/mig-bogus": 1}},
            'requests["nvidia.com/mig-bogus"]',
            "not a MIG profile",
        ),
        (
            {"name": "p", "requests": {"nvidia.com/mig-1g.10gb": -1}},
            'requests["nvidia.com/mig-1g.10gb"]',
            "whole number",
        ),
        ({"name": "p", "requests": {}, "nodeSelector": {"": "a"}}, "nodeSelector", "non-empty"),
        ({"name": "p", "requests": {}, "priority": True}, "priority", "whole number"),
        ({"name": " ", "requests": {}}, "name", "empty"),
    ],
    ids=["operator", "exists-value", "profile", "negative", "empty-key", "priority-bool", "blank-name"],
)
def test_a_pod_the_fast_path_refuses_gets_the_full_checks_message(
    raw: dict[str, Any], where: str, says: str
) -> None:
    good = {"name": "ok", "requests": {}, "tolerations": [{"operator": "Exists"}]}
    parse_snapshot({"nodes": [], "pending": [good]})  # a toleration checked once is kept
    with pytest.raises(InvalidSnapshot) as info:
        parse_snapshot({"nodes": [], "pending": [good, raw]})
    assert info.value.path == f"pending[1].{where}"
    assert says in str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in SNAPSHOTS.glob("*.yaml")))
def test_layouts_read_by_the_fast_path_equal_those_of_the_full_check(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cdmo.planner import parse

    data = load_fixture(name)
    for cache in (parse._LAYOUTS, parse._GPUS, parse._INSTANCES):
        cache.clear()
    fast = parse_snapshot(copy.deepcopy(data))
    for cache in (parse._LAYOUTS, parse._GPUS, parse._INSTANCES):
        cache.clear()
    monkeypatch.setattr(parse, "_layout_fast", lambda *_: None)
    monkeypatch.setattr(parse, "_holds", lambda *_: False)  # every layout checked rule by rule
    assert parse_snapshot(copy.deepcopy(data)) == fast
