"""Nodes are grouped by what the pods' filters can see of them: a node's name counts only where
some pod's ``matchFields`` lists it. One pod pinned by name once made every node its own group,
and a 1000-node plan seven times slower (docs/planner.md)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cdmo.planner import algorithm, parse_snapshot, plan, plan_to_dict, reasons
from cdmo.planner.eligibility import names_told_apart
from cdmo.planner.models import NodeSelectorRequirement, NodeSelectorTerm, PendingPod

from .oracle import random_snapshot


def _pod(*fields: tuple[str, str, tuple[str, ...]]) -> PendingPod:
    term = NodeSelectorTerm((), tuple(NodeSelectorRequirement(k, op, v) for k, op, v in fields))
    return PendingPod(name="p", namespace="ns", requests={"nvidia.com/mig-1g.10gb": 1}, node_affinity=(term,))


def test_names_told_apart_are_those_an_in_or_notin_lists() -> None:
    pods = [
        _pod(("metadata.name", "In", ("a", "b"))),
        _pod(("metadata.name", "NotIn", ("c",))),
        PendingPod(name="plain", namespace="ns", requests={"nvidia.com/mig-1g.10gb": 1}),
    ]
    assert names_told_apart(pods) == {"a", "b", "c"}
    assert names_told_apart(pods[2:]) == frozenset()
    # Rules every node passes or fails alike tell no name apart.
    assert names_told_apart([_pod(("metadata.name", "Exists", ()), ("other.field", "In", ("d",)))]) == set()
    # A rule that reads the name as a number (a snapshot built in code may hold one): every name.
    assert names_told_apart([*pods, _pod(("metadata.name", "Gt", ("4",)))]) is None


def _nodes(count: int) -> list[dict[str, Any]]:
    gpus = [{"index": 0, "model": "h100-80gb", "instances": []}]
    return [
        {
            "name": f"n{i:03d}",
            "labels": {"cdmo.clear.ml/gpu-partitioning": "mig", "zone": "ab"[i % 2]},
            "gpus": gpus,
        }
        for i in range(count)
    ]


def _affinity(op: str, values: list[str]) -> dict[str, Any]:
    term = {"matchFields": [{"key": "metadata.name", "operator": op, "values": values}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def test_only_the_nodes_a_pod_names_get_a_group_of_their_own() -> None:
    pending = [
        {
            "name": f"p{i}",
            "namespace": "ns",
            "requests": {"nvidia.com/mig-1g.10gb": 1},
            "nodeSelector": {"zone": "a"},
        }
        for i in range(5)
    ]
    pending.append(
        {
            "name": "pinned",
            "namespace": "ns",
            "requests": {"nvidia.com/mig-1g.10gb": 1},
            "affinity": _affinity("In", ["n007"]),
        }
    )
    pending.append(
        {
            "name": "not-there",
            "namespace": "ns",
            "requests": {"nvidia.com/mig-1g.10gb": 1},
            "affinity": _affinity("NotIn", ["n010"]),
        }
    )
    planner = algorithm.Planner(parse_snapshot({"nodes": _nodes(60), "pending": pending}))
    try:
        sizes = sorted(len(g.nodes) for g in planner.groups)
        # zone a and zone b, and n007 and n010 (zone b, zone a) each on their own
        assert sizes == [1, 1, 29, 29], sizes
        pinned = next(p for p in planner.pods if p.pod.name == "pinned")
        assert [n.name for g in pinned.groups for n in g.nodes] == ["n007"]
    finally:
        planner.close()


def _with_names(seed: int) -> dict[str, Any]:
    """A random snapshot where a few pods name nodes (In or NotIn, some names absent)."""
    rng = random.Random(seed)
    data = random_snapshot(50_000 + seed, max_nodes=10, max_gpus=3, max_pods=30)
    names = [n["name"] for n in data["nodes"]] + ["gone"]
    for p in data["pending"]:
        if rng.random() < 0.25:
            op = rng.choice(["In", "NotIn"])
            p["affinity"] = _affinity(op, rng.sample(names, rng.randint(1, min(2, len(names)))))
    return data


def _admits(pod: dict[str, Any], node: str) -> bool:
    terms = pod.get("affinity", {}).get("nodeAffinity", {})
    terms = terms.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    for term in terms:
        for req in term.get("matchFields", []):
            listed = node in req["values"]
            if listed != (req["operator"] == "In"):
                return False
    return True


@pytest.mark.parametrize("seed", range(40))
def test_grouping_by_listed_names_serves_as_grouping_by_every_name(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal-ranked placements may fall to other GPUs (ties between GPUs of one group go by state,
    across groups by node), so the plans are compared by what they serve and why pods wait."""
    data = _with_names(seed)
    snapshot = parse_snapshot(data)
    grouped = plan_to_dict(plan(snapshot))
    with monkeypatch.context() as patch:
        patch.setattr(algorithm, "names_told_apart", lambda pods: None)
        patch.setattr(reasons, "names_told_apart", lambda pods: None)
        apart = plan_to_dict(plan(snapshot))
    assert grouped["summary"] == apart["summary"]
    served = sorted((a["priority"], a["pod"]) for a in grouped["assignments"])
    assert len(served) == len(apart["assignments"])
    assert sorted(a["priority"] for a in apart["assignments"]) == [p for p, _ in served]
    assert grouped["unsatisfied"] == apart["unsatisfied"]
    pods = {f"{p['namespace']}/{p['name']}": p for p in data["pending"]}
    for a in grouped["assignments"]:
        assert _admits(pods[a["pod"]], a["node"]), a


@pytest.mark.parametrize("seed", range(40))
def test_the_heap_of_group_answers_finds_what_asking_every_group_finds(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pods that see many groups take their best group from a heap kept per kind; forced on for
    every pod here (the snapshots are small), the plan must be the one of asking every group."""
    data = _with_names(seed)
    for p in data["pending"][::3]:
        p["priority"] = p.get("priority", 0) + 5  # more levels: more answers to keep
    snapshot = parse_snapshot(data)
    with monkeypatch.context() as patch:
        patch.setattr(algorithm, "MANY_GROUPS", 10**9)
        every = plan(snapshot)
    with monkeypatch.context() as patch:
        patch.setattr(algorithm, "MANY_GROUPS", 0)
        heap = plan(snapshot)
    assert plan_to_dict(heap) == plan_to_dict(every)
    assert repr(heap) == repr(every)
