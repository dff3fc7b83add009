"""Pods pinned to nodes by name (``matchFields: metadata.name In [...]``) are checked against those
nodes alone. The plan, reasons included, must be the one of checking every node."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cdmo.planner import algorithm, parse_snapshot, plan, plan_to_dict, reasons
from cdmo.planner.eligibility import named_nodes
from cdmo.planner.models import NodeSelectorRequirement, NodeSelectorTerm

from .oracle import random_snapshot


def _term(*fields: tuple[str, str, tuple[str, ...]], labels: bool = False) -> NodeSelectorTerm:
    exprs = (NodeSelectorRequirement("zone", "Exists", ()),) if labels else ()
    return NodeSelectorTerm(exprs, tuple(NodeSelectorRequirement(k, op, v) for k, op, v in fields))


def test_named_nodes_is_the_union_of_what_each_term_names() -> None:
    name_in = ("metadata.name", "In", ("a", "b"))
    assert named_nodes((_term(name_in), _term(("metadata.name", "In", ("c",))))) == {"a", "b", "c"}
    both = (_term(name_in, ("metadata.name", "In", ("b", "z"))),)
    assert named_nodes(both) == {"b"}  # a term's requirements all hold: the intersection
    assert named_nodes((_term(name_in), _term(("metadata.name", "NotIn", ("a",))))) is None
    assert named_nodes((_term(name_in, labels=True),)) == {"a", "b"}  # labels narrow, never widen
    assert named_nodes(None) is None and named_nodes(()) is None


def _pinned(seed: int) -> dict[str, Any]:
    """A random snapshot whose pods are pinned by name, some to nodes that do not exist, some
    beside a selector or label expression that their nodes fail."""
    rng = random.Random(seed)
    data = random_snapshot(40_000 + seed, max_nodes=8, max_gpus=3, max_pods=30)
    names = [n["name"] for n in data["nodes"]] + ["gone"]
    for p in data["pending"]:
        if rng.random() < 0.8:
            fields = [
                {"key": "metadata.name", "operator": "In", "values": rng.sample(names, rng.randint(1, 2))}
            ]
            term: dict[str, Any] = {"matchFields": fields}
            if rng.random() < 0.3:
                term["matchExpressions"] = [{"key": "zone", "operator": "In", "values": ["a"]}]
            p["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
                }
            }
        if rng.random() < 0.2:
            p["nodeSelector"] = {"zone": rng.choice(["a", "b"])}
    return data


@pytest.mark.parametrize("seed", range(30))
def test_pinned_pods_get_the_plan_of_checking_every_node(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = parse_snapshot(_pinned(seed))
    fast = plan(snapshot)
    with monkeypatch.context() as patch:
        patch.setattr(algorithm, "named_nodes", lambda terms: None)
        patch.setattr(reasons, "named_nodes", lambda terms: None)
        slow = plan(snapshot)
    assert plan_to_dict(fast) == plan_to_dict(slow)
    assert repr(fast) == repr(slow)
